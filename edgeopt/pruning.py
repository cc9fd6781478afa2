"""`edgeopt prune`: PyTorch model -> pruned (and fine-tuned) FP32 ONNX, its weights, a report.

Under ``torchrun`` every rank prunes the same way and fine-tunes its share of each batch
(DDP); only rank 0 exports and writes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeopt import report as reporting
from edgeopt._outdir import Staging, check_output_dir
from edgeopt._progress import Steps
from edgeopt._source import load_source, prepare
from edgeopt.recipe import OptimizeConfig

PARITY_SAMPLES = 8


def prune(config: OptimizeConfig, steps: Steps | None = None) -> dict:
    """Run ``edgeopt prune`` for ``config`` (its ``prune`` options set); returns the report,
    or ``{}`` on a DDP rank other than 0 (which writes nothing)."""
    from dataclasses import replace

    from edgeopt._prune_step import check_prune, run_prune
    from edgeopt.calibrate.finetune import is_main_process, shutdown_distributed
    from edgeopt.calibrate.pruning import check_prunable

    steps = steps or Steps(quiet=True)
    started = time.time()
    with steps.step("load model"):
        source = load_source(config)
    check_prunable(source.module, config.model)
    if config.calib is None and source.extra.get("reference") is None:
        # The metric then compares outputs on random inputs; the report says so.
        config = replace(config, calib="random")
    check_output_dir(config.out, [])
    with steps.step("prepare data"):
        prepared = prepare(config, source)
        finetune_data = check_prune(config.prune, prepared, config.preprocess)
    with steps.step("FP32 reference outputs"):
        fp32_ref = _outputs(source.module, prepared, prepared.eval_inputs)
    try:
        outcome = run_prune(config.prune, prepared, fp32_ref, steps, finetune_data)
        if not is_main_process():
            return {}
        return _write(config, prepared, outcome, fp32_ref, steps, started)
    finally:
        shutdown_distributed()


def _outputs(module, prepared, samples) -> np.ndarray:
    from edgeopt.pipeline import _stack_first, _torch_outputs

    return _stack_first(_torch_outputs(prepared, samples, module=module))


def _write(config: OptimizeConfig, prepared, outcome, fp32_ref, steps: Steps,
           started: float) -> dict:
    import torch

    from edgeopt._prune_step import artifact_figures
    from edgeopt.calibrate.pruning import deflated_size
    from edgeopt.convert import export_onnx, file_sha256
    from edgeopt.pipeline import _run_all, _stack_first
    from edgeopt.runtimes import check, compare, get_adapter

    name = prepared.name
    staging = Staging(config.out)
    try:
        onnx_path = staging.path(f"{name}.pruned.onnx")
        weights = staging.path(f"{name}.pruned.pth")
        parity_inputs = prepared.eval_inputs[:PARITY_SAMPLES]
        ort = get_adapter("ort-cpu")
        with steps.step("torch -> ONNX"):
            result = export_onnx(outcome.module, prepared.source.example_inputs, onnx_path,
                                 input_names=tuple(n for n, _, _ in prepared.input_specs),
                                 output_names=prepared.output_names or None)
            torch_outs = [[o] for o in _outputs(outcome.module, prepared, parity_inputs)]
            parity = check(compare("torch -> ONNX", torch_outs,
                                   [o[:1] for o in _run_all(ort.load(onnx_path), parity_inputs)]))
        with steps.step(f"evaluate {onnx_path.name}") as update:
            outs = _stack_first(_run_all(ort.load(onnx_path), prepared.eval_inputs, update))
            value = prepared.score(outs, fp32_ref)
        torch.save(outcome.state, weights)
        record = outcome.record
        record["artifact"] = artifact_figures(onnx_path, outcome.pruned_tensors)
        record["metric_onnx"] = round(value, 6)
        files = [onnx_path.name, weights.name]
        report = {
            **reporting.header(config, prepared),
            "steps": [{"name": k, "seconds": round(v, 3)} for k, v in steps.timings.items()],
            "pruning": record,
            "artifacts": [{
                "path": onnx_path.name, "format": "onnx", "precision": "fp32",
                "size_bytes": onnx_path.stat().st_size,
                "size_zipped_bytes": deflated_size([onnx_path]),
                "sha256": file_sha256(onnx_path),
                "exporter": result.exporter, "parity": parity.to_dict(),
                "accuracy": {"metric": prepared.metric, "value": round(value, 6),
                             "samples": len(prepared.eval_inputs)},
            }, {"path": weights.name, "format": outcome.state["format"],
                "size_bytes": weights.stat().st_size, "sha256": file_sha256(weights),
                "load_with": LOAD_HINT}],
            "warnings": list(result.warnings),
            "duration_s": round(time.time() - started, 2),
        }
        files += reporting.write(staging.dir, report, markdown=reporting.prune_markdown)
        staging.commit(files)
    except BaseException:
        staging.abort()
        raise
    return report


LOAD_HINT = ("edgeopt.calibrate.pruning.load_pruned(build_model(), "
             "torch.load(path, weights_only=True))")


def default_out(spec: str) -> Path:
    from edgeopt._source import artifact_stem

    return Path("edgeopt-out") / f"{artifact_stem(spec)}-pruned"
