"""Fine-tuning after pruning, in one process or on PyTorch's distributed engine (DDP).

With labels the task loss is cross-entropy; without, the pruned model distils from the
unpruned one (KL divergence of temperature-softened logits, scaled by T^2), so an ImageNet
model recovers without ImageNet. L2 regularization is the optimizer's weight decay: Adam
with ``weight_decay`` adds ``wd * w`` to the gradient, which is L2 (AdamW's decoupled decay
is not), and it is what the pruning literature's "prune, then retrain with L2" means. Adam
rather than SGD with momentum because a few epochs on a small set need no learning-rate
tuning per model; the rate follows a cosine from ``lr`` to 0 over all the steps.

The whole model stays in eval mode while its weights train: BatchNorm keeps the running
statistics (still valid for the kept channels, or re-estimated after pruning), which small
fine-tuning sets would corrupt, and dropout is off. It also makes DDP exactly equal to one
process with the same global batch: no per-rank batch statistics. Batches are a seeded
permutation per epoch (seed + epoch); the last incomplete global batch is dropped in every
mode, so one process and N processes see the same batches. Under ``torchrun`` each rank
takes a contiguous 1/N of every global batch, DDP averages the gradients, and the reported
loss is the mean over the global batch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgeopt.calibrate.errors import FinetuneError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "FinetuneConfig",
    "FinetuneData",
    "FinetuneError",
    "FinetuneResult",
    "finetune",
    "init_distributed",
    "is_main_process",
    "shutdown_distributed",
    "validate",
]


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune; checked when made.

    Attributes:
        epochs: passes over the training samples, >= 1.
        lr: Adam's initial learning rate (cosine-annealed to 0 by the last step).
        weight_decay: L2 coefficient (Adam's coupled weight decay), >= 0.
        batch_size: the global batch; under DDP each of N processes takes batch_size // N.
        seed: seeds the weights' RNG and each epoch's shuffling (seed + epoch).
        temperature: distillation temperature T (the KL term is scaled by T^2).

    Raises:
        FinetuneError: every out-of-range setting, in one line.
    """

    epochs: int
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int = 32
    seed: int = 0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"--epochs {self.epochs} must be >= 1")
        if not self.lr > 0:
            problems.append(f"--lr {self.lr} must be > 0")
        if not self.weight_decay >= 0:
            problems.append(f"--weight-decay {self.weight_decay} must be >= 0 (0 turns L2 off)")
        if self.batch_size < 1:
            problems.append(f"--batch-size {self.batch_size} must be >= 1")
        if not self.temperature > 0:
            problems.append(f"distillation temperature {self.temperature} must be > 0 "
                            "(1 keeps the teacher's probabilities as they are)")
        if problems:
            raise FinetuneError("; ".join(problems))


@dataclass(frozen=True)
class FinetuneData:
    """Samples to fine-tune on (``finetune_data.read_finetune_data`` makes them from files).

    Attributes:
        inputs: one ``{input_name: batch-1 array}`` per training sample.
        labels: int class indices, shape (len(inputs),); None: distil from a teacher.
        val_inputs: held-out samples, disjoint from ``inputs``.
        val_labels: their labels (None exactly when ``labels`` is None).
        note: one line for the report: where the samples came from.
    """

    inputs: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    val_inputs: list[dict[str, np.ndarray]]
    val_labels: np.ndarray | None
    note: str


@dataclass
class FinetuneResult:
    """What ``finetune`` did; ``epochs`` holds one record per epoch:
    ``{"epoch": 1-based, "loss": mean training loss (task + extra_loss) over the global
    batches, "val_metric": accuracy, or top-1 agreement with the teacher, "seconds"}``."""

    mode: str                                 # "labels" | "distill"
    epochs: list[dict] = field(default_factory=list)
    world_size: int = 1
    rank: int = 0
    global_batch: int = 0


# --- distributed ----------------------------------------------------------------------

_CREATED_GROUP = False


def init_distributed() -> tuple[int, int]:
    """(rank, world size). Under ``torchrun`` (``WORLD_SIZE`` > 1) joins the process group
    the environment describes the first time (nccl with CUDA, else gloo); a group the caller
    made is used as it is. One process: (0, 1)."""
    global _CREATED_GROUP
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
            return 0, 1
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        _CREATED_GROUP = True
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    """Rank 0, or no distributed run: the one process that writes artifacts and prints."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0") or 0) == 0


def shutdown_distributed() -> None:
    """Leave the process group if ``init_distributed`` created it (not the caller's)."""
    global _CREATED_GROUP
    import torch.distributed as dist

    if _CREATED_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _CREATED_GROUP = False


# --- training -------------------------------------------------------------------------

def finetune(model: nn.Module, data: FinetuneData, config: FinetuneConfig, *,
             input_names: list[str], teacher: nn.Module | None = None,
             extra_loss: Callable[[], torch.Tensor] | None = None,
             on_epoch_end: Callable[[int], None] | None = None,
             progress: Callable[[int, dict], None] | None = None) -> FinetuneResult:
    """Train ``model`` in place on ``data`` (see the module docstring for the choices).

    Args:
        model: the (pruned) model; its first output must be (batch, classes) logits
            (distillation also takes (batch, ..., classes)).
        data: training and validation samples; labels or None (then distillation).
        config: epochs, learning rate, L2, global batch, seed, temperature.
        input_names: the model's positional inputs, keys of every sample.
        teacher: the unpruned model, required without labels; never trained.
        extra_loss: added to the task loss at every step (e.g. NNCF's RB pruning loss).
        on_epoch_end: called with the 0-based epoch after each epoch (e.g. a scheduler step).
        progress: called with the 1-based epoch and its record after each epoch.

    Returns:
        A FinetuneResult; ``model`` is left in eval mode, on the device it came on.

    Raises:
        FinetuneError: no teacher without labels, labels that do not fit the samples or
            the model's classes, fewer samples than one global batch, a global batch that
            does not split over the processes.
    """
    import torch

    mode = _check_data(data, teacher, input_names)
    rank, world = init_distributed()
    steps_per_epoch = _steps_per_epoch(config, world, len(data.inputs))
    device = _training_device(model, world)
    homes = [(m, _device_of(m)) for m in (model, teacher) if m is not None]
    for m, _ in homes:
        m.to(device)
    try:
        for m, _ in homes:
            m.eval()                         # BatchNorm statistics and dropout frozen
        torch.manual_seed(config.seed)
        _check_outputs(model, data, input_names, device)
        trainer = _Trainer(model, data, config, input_names, teacher, extra_loss,
                           (rank, world, device, steps_per_epoch))
        result = FinetuneResult(mode, world_size=world, rank=rank,
                                global_batch=config.batch_size)
        for epoch in range(config.epochs):
            start = time.perf_counter()
            loss = trainer.epoch(epoch)
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            record = {"epoch": epoch + 1, "loss": round(loss, 6),
                      "val_metric": round(validate(model, data, input_names, teacher), 6),
                      "seconds": round(time.perf_counter() - start, 2)}
            result.epochs.append(record)
            if progress is not None:
                progress(epoch + 1, record)
    finally:
        for m, home in homes:
            m.to(home)
        model.eval()
    return result


def _steps_per_epoch(config: FinetuneConfig, world: int, n: int) -> int:
    """Full global batches per epoch; raise when the batch does not split over the
    processes or the data makes no full batch."""
    if config.batch_size % world:
        msg = (f"--batch-size {config.batch_size} must be a multiple of the {world} "
               "processes (each takes an equal share of the global batch)")
        raise FinetuneError(msg)
    steps = n // config.batch_size
    if steps < 1:
        msg = (f"{n} fine-tuning samples make no full batch of {config.batch_size}; "
               "lower --batch-size or give more data")
        raise FinetuneError(msg)
    return steps


class _Trainer:
    """One fine-tuning run: the (DDP-wrapped) model, Adam with L2 and a cosine schedule,
    and the loss of each rank's share of a global batch."""

    def __init__(self, model, data: FinetuneData, config: FinetuneConfig,
                 input_names: list[str], teacher, extra_loss, placement: tuple) -> None:
        import torch

        self.rank, self.world, self.device, self.steps = placement
        self.model, self.data, self.config = model, data, config
        self.input_names, self.teacher, self.extra_loss = input_names, teacher, extra_loss
        self.trained = model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.trained = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.trained.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=config.epochs * self.steps)
        self.labels = (None if data.labels is None
                       else torch.as_tensor(data.labels, dtype=torch.long))

    def epoch(self, epoch: int) -> float:
        """One pass over the global batches (seeded order); the mean loss over them."""
        import torch

        config = self.config
        share = config.batch_size // self.world
        generator = torch.Generator().manual_seed(config.seed + epoch)
        order = torch.randperm(len(self.data.inputs), generator=generator)
        total = torch.zeros((), device=self.device)
        for step in range(self.steps):
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            loss = self._loss(batch[self.rank * share:(self.rank + 1) * share])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
            total += loss.detach()
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)           # equal shares: the mean of the rank means
            total /= self.world
        return float(total) / self.steps

    def _loss(self, mine):
        import torch
        import torch.nn.functional as F

        inputs = _stack([self.data.inputs[i] for i in mine.tolist()], self.input_names,
                        self.device)
        logits = _first(self.trained(*inputs))
        if self.labels is not None:
            loss = F.cross_entropy(logits, self.labels[mine].to(self.device))
        else:
            t = self.config.temperature
            with torch.no_grad():
                soft = F.softmax(_first(self.teacher(*inputs)) / t, dim=-1)
            loss = F.kl_div(F.log_softmax(logits / t, dim=-1), soft,
                            reduction="batchmean") * (t * t)
        if self.extra_loss is not None:
            loss = loss + self.extra_loss()   # same on every rank: the DDP mean keeps it whole
        return loss


def validate(model: nn.Module, data: FinetuneData, input_names: list[str],
             teacher: nn.Module | None = None, batch: int = 64) -> float:
    """Accuracy on the validation labels, else top-1 agreement with ``teacher``; NaN
    without validation samples. Every rank computes the same number."""
    import torch

    if not data.val_inputs:
        return float("nan")
    device = _device_of(model)
    predicted, expected = [], []
    with torch.no_grad():
        for i in range(0, len(data.val_inputs), batch):
            inputs = _stack(data.val_inputs[i:i + batch], input_names, device)
            predicted.append(_first(model(*inputs)).argmax(-1).cpu().numpy())
            if data.val_labels is None:
                expected.append(_first(teacher(*inputs)).argmax(-1).cpu().numpy())
    got = np.concatenate(predicted)
    want = np.asarray(data.val_labels) if data.val_labels is not None else np.concatenate(expected)
    return float(np.mean(got == want))


# --- helpers --------------------------------------------------------------------------

def _check_data(data: FinetuneData, teacher, input_names: list[str]) -> str:
    """"labels" or "distill"; raise on data that cannot train."""
    if not data.inputs:
        msg = f"fine-tuning data {data.note}: no training samples"
        raise FinetuneError(msg)
    missing = [n for n in input_names if n not in data.inputs[0]]
    if missing:
        msg = (f"fine-tuning data {data.note}: samples have no input(s) {', '.join(missing)} "
               f"(they have {', '.join(data.inputs[0]) or 'none'})")
        raise FinetuneError(msg)
    if data.val_inputs and (data.labels is None) != (data.val_labels is None):
        msg = (f"fine-tuning data {data.note}: labels for the training or the validation "
               "samples only; give labels for both or for neither")
        raise FinetuneError(msg)
    if data.labels is None:
        if teacher is None:
            msg = "fine-tuning data without labels needs the unpruned model to distil from"
            raise FinetuneError(msg)
        return "distill"
    for name, labels, samples in (("labels", data.labels, data.inputs),
                                  ("validation labels", data.val_labels, data.val_inputs)):
        if labels is None:
            continue
        labels = np.asarray(labels)
        if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(samples),):
            msg = (f"fine-tuning data {data.note}: {name} are {labels.dtype} shaped "
                   f"{labels.shape}; give one integer class index per sample ({len(samples)})")
            raise FinetuneError(msg)
        if labels.size and labels.min() < 0:
            msg = f"fine-tuning data {data.note}: negative {name}; use class indices 0..K-1"
            raise FinetuneError(msg)
    return "labels"


def _check_outputs(model, data: FinetuneData, input_names: list[str], device) -> None:
    """The first output is (batch, classes) logits (distillation also takes (batch, ...,
    classes), e.g. per-token logits) and every label is one of the classes."""
    import torch

    with torch.no_grad():
        out = _first(model(*_stack(data.inputs[:1], input_names, device)))
    labelled = data.labels is not None
    if not isinstance(out, torch.Tensor) or out.ndim < 2 or (labelled and out.ndim != 2) \
            or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        msg = (f"the model's first output is {shape} for one sample; fine-tuning "
               f"{'with labels ' if labelled else ''}needs (batch, classes) logits")
        raise FinetuneError(msg)
    classes = out.shape[-1]
    for labels in (data.labels, data.val_labels):
        if labels is not None and len(labels) and int(np.max(labels)) >= classes:
            msg = (f"fine-tuning data {data.note}: a label is {int(np.max(labels))} but the model "
                   f"has {classes} classes; labels must be class indices 0..{classes - 1}")
            raise FinetuneError(msg)


def _training_device(model, world: int):
    """Under nccl each rank trains on its own GPU; otherwise where the model already is."""
    import torch

    if world > 1:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            local = int(os.environ.get("LOCAL_RANK", "0") or 0)
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
    return _device_of(model)


def _device_of(module):
    import torch

    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _stack(samples: list[dict[str, np.ndarray]], names: list[str], device=None) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.concatenate([s[n] for s in samples])).to(device)
                 for n in names)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out
