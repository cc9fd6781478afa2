"""The prune step: prune a copy of the PyTorch model, fine-tune it, and describe the result.

Shared by ``edgeopt prune`` (writes the pruned FP32 model) and ``edgeopt optimize
--prune-mode`` (quantizes and benchmarks it). The metric is always measured against the
unpruned FP32 model's outputs, so the report shows what pruning cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeopt._outputs import stack_first, torch_outputs
from edgeopt._progress import Steps
from edgeopt._source import Prepared
from edgeopt.errors import UsageError
from edgeopt.recipe import PruneRecipe

VAL_FRACTION = 0.1


@dataclass
class PruneOutcome:
    module: object                 # the plain nn.Module to export
    record: dict                   # the report's "pruning" section
    pruned_tensors: tuple[str, ...]  # weights NNCF masked (unstructured modes)
    state: dict                    # what NAME.pruned.pth holds


def check_prune(options: PruneRecipe, prepared: Prepared, preprocess=None):
    """Everything about the pruning request that can be wrong, before anything is written:
    the model must be an ``nn.Module``, ignored layers must exist, the fine-tuning data must
    read. Returns the fine-tuning data (None without ``--epochs``)."""
    from edgeopt.calibrate.pruning import check_prunable, resolve_ignored

    source = prepared.source
    check_prunable(source.module, source.spec)
    resolve_ignored(source.module, options.ignore)
    return _finetune_data(options, prepared, preprocess) if options.epochs else None


def run_prune(options: PruneRecipe, prepared: Prepared, fp32_ref: np.ndarray,
              steps: Steps, data=None) -> PruneOutcome:
    """Prune (and fine-tune on ``data`` if given) ``prepared``'s PyTorch model."""
    from edgeopt.calibrate.pruning import (
        count_macs_params,
        prune,
        pruned_state,
    )

    source = prepared.source
    names = tuple(n for n, _, _ in prepared.input_specs)
    config = options.prune_config()
    label = f"prune ({config.mode}, ratio {config.ratio:g})"
    # Random inputs say nothing about the data the model will see: nothing is fitted to them.
    real = [] if prepared.calib_note.startswith("RANDOM") else prepared.calib
    with steps.step(label):
        pruned = prune(source.module, source.example_inputs, config, calib=real,
                       input_names=names)
    record = {"mode": config.mode, "ratio": config.ratio, "ignore": list(config.ignore),
              "importance": config.importance if config.structured else None,
              "metric": prepared.metric, "notes": pruned.notes}
    if not real:
        record["notes"].append("no calibration data (--calib): no least-squares re-fit or "
                               "BatchNorm re-estimation")
    # BatchNorm statistics re-estimated on the calibration data, unless least squares
    # already re-fitted the layers to the unpruned outputs (the trained statistics then
    # still hold, and a small calibration set estimates them worse).
    if real and config.ratio > 0 and pruned.rb_loss is None and not pruned.reconstructed:
        record["metric_before_batchnorm_adaptation"] = round(
            prepared.score(_outputs(pruned.module, prepared), fp32_ref), 6)
        with steps.step("batch-norm adaptation"):
            note = _adapt_if_it_helps(pruned, prepared, names)
        if note:
            record["notes"].append(note)
    record["metric_before_finetune"] = round(
        prepared.score(_outputs(pruned.module, prepared), fp32_ref), 6)
    if data is not None:
        record["finetune"] = _finetune(options, pruned, data, prepared, names, steps)
        record["metric_after_finetune"] = round(
            prepared.score(_outputs(pruned.module, prepared), fp32_ref), 6)
    pruned_tensors = _masked_tensors(pruned)
    with steps.step("bake the pruning into the weights"):
        module = pruned.finalize().eval()
        after = count_macs_params(module, source.example_inputs)
    record["macs_before"], record["params_before"] = pruned.before["macs"], pruned.before["params"]
    record["macs_after"], record["params_after"] = after["macs"], after["params"]
    record["macs_ratio"] = round(after["macs"] / max(pruned.before["macs"], 1), 4)
    record["params_ratio"] = round(after["params"] / max(pruned.before["params"], 1), 4)
    return PruneOutcome(module, record, pruned_tensors, pruned_state(module))


def _adapt_if_it_helps(pruned, prepared: Prepared, names) -> str | None:
    """Re-estimate BatchNorm statistics on half the calibration samples, and keep them only
    if the pruned model's outputs then move closer to the unpruned model's on the other half.
    A small calibration set can estimate them worse than the trained ones (MobileNetV2 on
    the bundled-photo crops: better after local pruning, worse after global)."""
    import copy

    from edgeopt.calibrate.pruning import adapt_batchnorm

    fit, judge = prepared.calib[::2], prepared.calib[1::2]
    if not fit or not judge:
        return None
    candidate = copy.deepcopy(pruned.module)
    if not adapt_batchnorm(candidate, fit, names):
        return None
    teacher = _logits(prepared.source.module, judge, names)
    before = _kl(teacher, _logits(pruned.module, judge, names))
    after = _kl(teacher, _logits(candidate, judge, names))
    if after < before:
        pruned.module = candidate
        return (f"BatchNorm statistics re-estimated on {len(fit)} calibration samples (KL to "
                f"the unpruned outputs on {len(judge)} others: {before:.3f} -> {after:.3f})")
    return (f"BatchNorm statistics kept: re-estimating them on {len(fit)} calibration samples "
            f"moved the outputs away from the unpruned ones (KL {before:.3f} -> {after:.3f})")


def _logits(module, samples, names) -> np.ndarray:
    module.eval()
    return stack_first(torch_outputs(module, names, samples))


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean KL(softmax(p) || softmax(q)) over rows."""
    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp, lq = log_softmax(p_logits.astype(np.float64)), log_softmax(q_logits.astype(np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())


def _outputs(module, prepared: Prepared) -> np.ndarray:
    module.eval()
    names = [n for n, _, _ in prepared.input_specs]
    return stack_first(torch_outputs(module, names, prepared.eval_inputs))


def _masked_tensors(pruned) -> tuple[str, ...]:
    if pruned.config.structured or pruned.config.ratio == 0 and pruned.rb_loss is None:
        return ()
    import nncf

    return tuple(sorted(t.tensor_name for t in nncf.pruning_statistic(pruned.module).pruned_tensors))


def _finetune_data(options: PruneRecipe, prepared: Prepared, preprocess=None):
    """--finetune-data (images take --preprocess, else a reference model's own), or a
    reference model's own fine-tuning set."""
    from edgeopt.calibrate.finetune import FinetuneData
    from edgeopt.calibrate.finetune_data import read_finetune_data
    from edgeopt.calibrate.images import reference_preprocess

    reference = prepared.reference
    if options.finetune_data is not None:
        if preprocess is None and reference is not None:
            preprocess = reference_preprocess(reference.preprocessing, prepared.input_specs[0][2])
        return read_finetune_data(options.finetune_data, prepared.input_specs,
                                  preprocess=preprocess, val_fraction=VAL_FRACTION)
    if reference is None or not reference.has_finetune_set:
        what = prepared.source.spec
        msg = (f"--epochs needs data to fine-tune {what} on: pass --finetune-data (.npz with "
               "the model's inputs and optional 'labels', or a folder of images)")
        raise UsageError(msg)
    inputs, labels = reference.finetune_set()
    order = np.random.default_rng(0).permutation(len(inputs))
    n_val = max(1, int(round(len(inputs) * VAL_FRACTION)))
    val, train = order[:n_val], order[n_val:]
    pick = (lambda idx: None if labels is None else labels[idx])  # noqa: E731
    kind = f"labelled ({len(train)} train)" if labels is not None else \
        f"unlabelled ({len(train)} train, distilled from the unpruned model)"
    return FinetuneData([inputs[i] for i in train], pick(train), [inputs[i] for i in val],
                        pick(val), f"{prepared.source.spec}'s fine-tuning set, {kind}, "
                        f"{len(val)} held out for validation")


def _finetune(options: PruneRecipe, pruned, data, prepared: Prepared, names, steps: Steps) -> dict:
    from edgeopt.calibrate.finetune import finetune
    from edgeopt.calibrate.pruning import rb_hooks

    config = options.finetune_config()
    extra_loss, on_epoch_end = rb_hooks(pruned, options.epochs)

    def progress(epoch: int, rec: dict) -> None:
        steps.console.print(f"  epoch {epoch}/{options.epochs}: loss {rec['loss']:.4f}, "
                            f"validation {rec['val_metric']:.4f} ({rec['seconds']:.1f} s)")

    with steps.step(f"fine-tune ({options.epochs} epochs)"):
        result = finetune(pruned.module, data, config, input_names=list(names),
                          teacher=prepared.source.module if data.labels is None else None,
                          extra_loss=extra_loss, on_epoch_end=on_epoch_end, progress=progress)
    return {"mode": result.mode, "data": data.note, "epochs": result.epochs,
            "lr": options.lr, "weight_decay": options.weight_decay,
            "global_batch": result.global_batch, "world_size": result.world_size}


def artifact_figures(onnx_path, pruned_tensors: tuple[str, ...]) -> dict:
    """Sparsity as measured in the exported file: per layer, over the pruned layers, overall."""
    from edgeopt.calibrate.pruning import onnx_sparsity

    measured = onnx_sparsity(onnx_path)
    figures = {"weights": measured["weights"], "zeros": measured["zeros"],
               "sparsity": measured["sparsity"], "layers": measured["layers"]}
    if pruned_tensors:
        chosen = [r for r in measured["layers"] if r["tensor"] in set(pruned_tensors)]
        size = sum(r["size"] for r in chosen)
        figures["pruned_layers"] = len(chosen)
        figures["pruned_layers_sparsity"] = round(
            sum(r["zeros"] for r in chosen) / size, 4) if size else 0.0
    return figures
