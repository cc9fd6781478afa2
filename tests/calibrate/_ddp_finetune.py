"""Fine-tune a small net on digits, alone or under torchrun; rank 0 saves the state dict."""

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_finetune import _data, _net  # noqa: E402

from edgeopt.calibrate.finetune import (  # noqa: E402
    FinetuneConfig,
    finetune,
    is_main_process,
    shutdown_distributed,
)

model = _net()
finetune(model, _data(), FinetuneConfig(epochs=2, lr=3e-3, batch_size=32), input_names=["input"])
if is_main_process():
    torch.save(model.state_dict(), sys.argv[1])
shutdown_distributed()
