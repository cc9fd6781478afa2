"""Calibration factories of zoo models (``--calib zoo.data:NAME``)."""

from __future__ import annotations

import numpy as np


def gru_chunks():
    """Chunks of a stream with the GRU's state carried as the model carries it: the
    state of each sample is the state the model returned for the previous chunk."""
    import torch

    from zoo.sequence import gru_state_module

    module, _ = gru_state_module()
    rng = np.random.default_rng(0)
    state = np.zeros((1, 1, 24), np.float32)
    for _ in range(64):
        frames = rng.standard_normal((1, 8, 12)).astype(np.float32)
        yield {"frames": frames, "state": state}
        with torch.no_grad():
            _, out = module(torch.from_numpy(frames), torch.from_numpy(state))
        state = out.numpy()


def vad_chunks():
    """Audio chunks at both sample rates, the rate a 0-d int64 array."""
    rng = np.random.default_rng(0)
    for i in range(64):
        yield {"audio": rng.standard_normal((1, 256)).astype(np.float32),
               "sr": np.array(16000 if i % 2 else 8000, np.int64)}
