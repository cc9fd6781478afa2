"""Fine-tuning after pruning, in one process or on PyTorch's distributed engine (DDP).

With labels the task loss is cross-entropy; without, the pruned model distils from the
unpruned one (KL divergence of temperature-softened logits, scaled by T^2), so an ImageNet
model recovers without ImageNet. L2 regularization is the optimizer's weight decay: Adam
with ``weight_decay`` adds ``wd * w`` to the gradient, which is L2 (AdamW's decoupled decay
is not), and it is what the pruning literature's "prune, then retrain with L2" means.

The whole model stays in eval mode while its weights train: BatchNorm keeps the running
statistics (re-estimated after pruning), which small fine-tuning sets would corrupt, and
dropout is off. It also makes DDP exactly equal to one process with the same global batch:
no per-rank batch statistics. Batches are a seeded permutation per epoch; the last
incomplete global batch is dropped in every mode, so one process and N processes see the
same batches. Under ``torchrun`` each rank takes a contiguous 1/N of every global batch, DDP
averages the gradients, and the reported loss is the mean over the global batch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgeopt.calibrate.errors import CalibrationError


class FinetuneError(CalibrationError):
    """Fine-tuning cannot run as asked (bad settings, unusable data)."""


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 32             # global: each of N ranks takes batch_size // N
    seed: int = 0
    temperature: float = 1.0         # distillation

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"--epochs {self.epochs} must be >= 1")
        if not self.lr > 0:
            problems.append(f"--lr {self.lr} must be > 0")
        if not self.weight_decay >= 0:
            problems.append(f"--weight-decay {self.weight_decay} must be >= 0")
        if self.batch_size < 1:
            problems.append(f"--batch-size {self.batch_size} must be >= 1")
        if not self.temperature > 0:
            problems.append(f"temperature {self.temperature} must be > 0")
        if problems:
            raise FinetuneError("; ".join(problems))


@dataclass(frozen=True)
class FinetuneData:
    inputs: list[dict[str, np.ndarray]]       # batch-1 samples
    labels: np.ndarray | None                 # int64 (N,), or None: distil from the teacher
    val_inputs: list[dict[str, np.ndarray]]
    val_labels: np.ndarray | None
    note: str


@dataclass
class FinetuneResult:
    mode: str                                 # "labels" | "distill"
    epochs: list[dict] = field(default_factory=list)
    world_size: int = 1
    rank: int = 0
    global_batch: int = 0


# --- distributed ----------------------------------------------------------------------

_CREATED_GROUP = False


def init_distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes (gloo on CPU, nccl
    with GPUs) the first time it is called there. One process: (0, 1)."""
    global _CREATED_GROUP
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        _CREATED_GROUP = True
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    """Rank 0 (or no distributed run): the one process that writes artifacts."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0") or 0) == 0


def shutdown_distributed() -> None:
    """Leave the process group if ``init_distributed`` created it."""
    global _CREATED_GROUP
    import torch.distributed as dist

    if _CREATED_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _CREATED_GROUP = False


# --- training -------------------------------------------------------------------------

def _stack(samples: list[dict[str, np.ndarray]], names: list[str]) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.concatenate([s[n] for s in samples])) for n in names)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def finetune(model, data: FinetuneData, config: FinetuneConfig, *, input_names: list[str],
             teacher=None, extra_loss: Callable | None = None,
             on_epoch_end: Callable[[int], None] | None = None,
             progress: Callable[[int, dict], None] | None = None) -> FinetuneResult:
    """Train ``model`` in place on ``data``; see the module docstring for the choices."""
    import torch
    import torch.nn.functional as F

    if data.labels is None and teacher is None:
        msg = "fine-tuning data without labels needs the unpruned model to distil from"
        raise FinetuneError(msg)
    rank, world = init_distributed()
    if config.batch_size % world:
        msg = (f"--batch-size {config.batch_size} must be a multiple of the {world} "
               "processes (each takes an equal share of the global batch)")
        raise FinetuneError(msg)
    n = len(data.inputs)
    steps_per_epoch = n // config.batch_size
    if steps_per_epoch < 1:
        msg = (f"{n} fine-tuning samples make no full batch of {config.batch_size}; "
               "lower --batch-size or give more data")
        raise FinetuneError(msg)
    torch.manual_seed(config.seed)
    mode = "labels" if data.labels is not None else "distill"
    trained = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model)
    model.eval()                         # BatchNorm statistics and dropout frozen
    if teacher is not None:
        teacher.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs * steps_per_epoch)
    share = config.batch_size // world
    result = FinetuneResult(mode, world_size=world, rank=rank, global_batch=config.batch_size)
    t = config.temperature
    for epoch in range(config.epochs):
        start = time.perf_counter()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + epoch))
        total = torch.zeros(())
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            mine = batch[rank * share:(rank + 1) * share].tolist()
            inputs = _stack([data.inputs[i] for i in mine], input_names)
            logits = _first(trained(*inputs))
            if mode == "labels":
                target = torch.from_numpy(np.asarray(data.labels)[mine]).long()
                loss = F.cross_entropy(logits, target)
            else:
                with torch.no_grad():
                    soft = F.softmax(_first(teacher(*inputs)) / t, dim=-1)
                loss = F.kl_div(F.log_softmax(logits / t, dim=-1), soft,
                                reduction="batchmean") * t * t
            if extra_loss is not None:
                loss = loss + extra_loss()    # every rank adds it: the DDP mean keeps it whole
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.detach()
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
            total /= world
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        record = {"epoch": epoch + 1, "loss": round(float(total) / steps_per_epoch, 6),
                  "val_metric": round(validate(model, data, input_names, teacher), 6),
                  "seconds": round(time.perf_counter() - start, 2)}
        result.epochs.append(record)
        if progress is not None:
            progress(epoch + 1, record)
    model.eval()
    return result


def validate(model, data: FinetuneData, input_names: list[str], teacher=None,
             batch: int = 64) -> float:
    """Accuracy on the validation labels, else top-1 agreement with the teacher."""
    import torch

    if not data.val_inputs:
        return float("nan")
    predicted, expected = [], []
    with torch.no_grad():
        for i in range(0, len(data.val_inputs), batch):
            inputs = _stack(data.val_inputs[i:i + batch], input_names)
            predicted.append(_first(model(*inputs)).argmax(-1).numpy())
            if data.val_labels is None:
                expected.append(_first(teacher(*inputs)).argmax(-1).numpy())
    got = np.concatenate(predicted)
    want = np.asarray(data.val_labels) if data.val_labels is not None else np.concatenate(expected)
    return float(np.mean(got == want))
