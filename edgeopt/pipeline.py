"""`edgeopt optimize`: model -> FP32 and INT8 artifacts per runtime, checked and measured."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt import report as reporting
from edgeopt._measure import run_target, target_availability
from edgeopt._outdir import Staging, check_output_dir
from edgeopt._progress import Steps
from edgeopt._source import Prepared, load_source, prepare
from edgeopt._targets import Target, resolve_targets
from edgeopt.errors import UsageError
from edgeopt.recipe import OptimizeConfig

# Which adapter evaluates accuracy and checks parity for each runtime, on this host.
HOST_ADAPTER = {"onnxruntime": "ort-cpu", "openvino": "ov-cpu"}
PARITY_SAMPLES = 8
LAYER_SQNR_ROWS = 10


@dataclass
class Artifact:
    """One file edgeopt made, before it is benchmarked on each device."""

    file: str                   # final file name in OUT
    format: str                 # onnx | openvino-ir
    precision: str              # fp32 | int8
    runtime: str                # onnxruntime | openvino
    companions: tuple[str, ...] = ()    # e.g. the .bin of an .xml
    accuracy: dict | None = None
    quantization: dict | None = None
    sensitivity: tuple = ()     # INT8: groups of its nodes, most damaged by quantization first


def _run_all(loaded, inputs: list[dict[str, np.ndarray]], update=None) -> list[list[np.ndarray]]:
    outs = []
    for i, feeds in enumerate(inputs):
        outs.append(loaded.run(feeds))
        if update is not None:
            update(i + 1, len(inputs))
    return outs


def _stack_first(outputs: list[list[np.ndarray]]) -> np.ndarray:
    return np.concatenate([o[0].reshape(1, -1) for o in outputs], axis=0)


def optimize(model: str | OptimizeConfig, out: str | Path | None = None, *,
             steps: Steps | None = None, **options) -> dict:
    """Run the pipeline and return the report (also written to ``OUT/report.json``).

    ``edgeopt.optimize("ref:mobilenet-v2", out="build")`` or
    ``edgeopt.optimize(OptimizeConfig(...))``; ``options`` are OptimizeConfig fields.

    Every input problem is raised before anything is written; a failure later removes
    what this run staged, so no half-written artifact is left under a final name.
    """
    from edgeopt.runtimes import get_adapter

    if isinstance(model, OptimizeConfig):
        config = model
    else:
        from edgeopt._source import artifact_stem

        config = OptimizeConfig(model=model, out=Path(out or Path("edgeopt-out") /
                                                      artifact_stem(model)), **options)
    steps = steps or Steps(quiet=True)
    started = time.time()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        msg = ("optimize runs in one process; fine-tune on several with 'torchrun ... -m "
               "edgeopt prune', then optimize its NAME.pruned.onnx")
        raise UsageError(msg)
    # 1. Everything the user gave is checked before any file is written.
    targets = resolve_targets(config.devices, config.runtimes)
    for runtime in config.runtimes:
        adapter = get_adapter(HOST_ADAPTER[runtime])
        availability = adapter.available()
        if not availability.ok:
            msg = f"{runtime} cannot run here: {availability.reason}"
            raise UsageError(msg)
    if config.require_measured:
        for target in targets:
            availability = target_availability(target)
            if not availability.ok:
                msg = (f"--require-measured: {target.label} via {target.adapter} cannot be "
                       f"measured here ({availability.reason})")
                raise UsageError(msg)
    with steps.step("load model"):
        source = load_source(config)
    if config.prune is not None:
        from edgeopt.calibrate.pruning import check_prunable

        check_prunable(source.module, config.model)
    inputs = [source.path] if source.path else []
    check_output_dir(config.out, inputs)
    with steps.step("prepare data"):
        prepared = prepare(config, source)
        finetune_data = None
        if config.prune is not None:
            from edgeopt._prune_step import check_prune

            finetune_data = check_prune(config.prune, prepared, config.preprocess)
    finals = _planned_files(prepared.name, config)
    for final in finals:
        for src in inputs:
            if (config.out / final).absolute() == src.absolute():
                msg = (f"--out {config.out} would overwrite the input {src} with an artifact of "
                       "the same name; choose another output folder")
                raise UsageError(msg)

    staging = Staging(config.out)
    try:
        record = _run(config, prepared, targets, staging, steps, finetune_data)
        files = [name for art in record.pop("_artifacts") for name in (art.file, *art.companions)]
        # Every timed step in the order it ran, with parity and exporter facts where known.
        extras = {s["name"]: s for s in record["steps"]}
        record["steps"] = [{**extras.get(k, {}), "name": k, "seconds": round(v, 3)}
                           for k, v in steps.timings.items()]
        record["duration_s"] = round(time.time() - started, 2)
        # The report is staged with the artifacts: all of them land together or none does.
        files += reporting.write(staging.dir, record)
        staging.commit(files)
    except BaseException:
        staging.abort()
        raise
    return record


def _planned_files(name: str, config: OptimizeConfig) -> list[str]:
    files = [f"{name}.fp32.onnx"]  # the ONNX export feeds both runtimes
    if "onnxruntime" in config.runtimes and config.quantize:
        files.append(f"{name}.int8-ort.onnx")
    if "openvino" in config.runtimes:
        files += [f"{name}.fp32.xml", f"{name}.fp32.bin"]
        if config.quantize:
            files += [f"{name}.int8-ov.xml", f"{name}.int8-ov.bin"]
    return files + ["report.json", "report.md"]


def _run(config, prepared: Prepared, targets, staging: Staging, steps: Steps,
         finetune_data=None) -> dict:
    from edgeopt.calibrate.calibrators import compute_ranges, sqnr_gain_db
    from edgeopt.calibrate.quantize import QuantConfig, activation_stats
    from edgeopt.convert import export_onnx, to_openvino_ir
    from edgeopt.runtimes import check, compare, get_adapter

    name = prepared.name
    source = prepared.source
    step_records: list[dict] = []
    warnings: list[str] = []
    artifacts: list[Artifact] = []
    parity_inputs = prepared.eval_inputs[:PARITY_SAMPLES]
    ort = get_adapter(HOST_ADAPTER["onnxruntime"])

    # 2. The source model's own outputs on the evaluation set: the FP32 reference.
    with steps.step("FP32 reference outputs") as update:
        if source.is_torch:
            ref_outs = _torch_outputs(prepared, prepared.eval_inputs, update)
        else:
            ref_outs = _run_all(ort.load(source.path), prepared.eval_inputs, update)
        fp32_ref = _stack_first(ref_outs)

    # 2b. Pruning (and fine-tuning) of the PyTorch model; the metric stays against the
    # unpruned FP32 outputs above, so every artifact's figure includes what pruning cost.
    pruning = None
    module, parity_ref = source.module, ref_outs[: len(parity_inputs)]
    if config.prune is not None:
        from edgeopt._prune_step import run_prune

        pruning = run_prune(config.prune, prepared, fp32_ref, steps, finetune_data)
        module = pruning.module
        parity_ref = _torch_outputs(prepared, parity_inputs, module=module)

    # 3. FP32 ONNX: exported from PyTorch, or a copy of the user's file (never modified).
    fp32_onnx = staging.path(f"{name}.fp32.onnx")
    if source.is_torch:
        with steps.step("torch -> ONNX"):
            result = export_onnx(module, source.example_inputs, fp32_onnx,
                                 input_names=tuple(n for n, _, _ in prepared.input_specs),
                                 output_names=prepared.output_names or None)
            onnx_outs = _run_all(ort.load(fp32_onnx), parity_inputs)
            parity = check(compare("torch -> ONNX", parity_ref, onnx_outs))
        for note in result.warnings:
            steps.warn(note)
            warnings.append(note)
        step_records.append(_step(steps, "torch -> ONNX", exporter=result.exporter,
                                  opset=result.opset, parity=parity.to_dict()))
    else:
        with steps.step("copy ONNX"):
            _copy_onnx(source.path, fp32_onnx)
        step_records.append(_step(steps, "copy ONNX"))
    artifacts.append(Artifact(fp32_onnx.name, "onnx", "fp32", "onnxruntime"))

    if "openvino" in config.runtimes:
        fp32_xml = staging.path(f"{name}.fp32.xml")
        with steps.step("ONNX -> OpenVINO IR"):
            to_openvino_ir(fp32_onnx, fp32_xml)
            ov = get_adapter(HOST_ADAPTER["openvino"])
            onnx_outs = _run_all(ort.load(fp32_onnx), parity_inputs)
            ir_outs = _run_all(ov.load(fp32_xml), parity_inputs)
            parity = check(compare("ONNX -> OpenVINO IR", onnx_outs, ir_outs))
        step_records.append(_step(steps, "ONNX -> OpenVINO IR", parity=parity.to_dict()))
        artifacts.append(Artifact(fp32_xml.name, "openvino-ir", "fp32", "openvino",
                                  companions=(fp32_xml.with_suffix(".bin").name,)))

    def evaluate(art: Artifact) -> float:
        with steps.step(f"evaluate {art.file}") as update:
            loaded = get_adapter(HOST_ADAPTER[art.runtime]).load(staging.path(art.file))
            outs = _stack_first(_run_all(loaded, prepared.eval_inputs, update))
            value = prepared.score(outs, fp32_ref)
            art.accuracy = {"metric": prepared.metric, "value": round(value, 6),
                            "samples": len(prepared.eval_inputs),
                            **prepared.extra_metrics(outs, fp32_ref)}
        return value

    budget = None
    if config.quantize:
        with steps.step("calibration statistics") as update:
            stats = activation_stats(fp32_onnx, prepared.calib, update)
        gains = sqnr_gain_db(stats, compute_ranges(stats, config.calibrator))
        step_records.append(_step(steps, "calibration statistics", tensors=len(stats),
                                  samples=len(prepared.calib), calibrator=config.calibrator,
                                  **_gain_summary(gains)))
        fp32_value = prepared.score(fp32_ref, fp32_ref)
        allowed = config.allowed_drop(fp32_value)
        budget = {"max_accuracy_drop": config.max_accuracy_drop, "fp32_value": round(fp32_value, 6),
                  "allowed_drop": None if allowed is None else round(allowed, 6),
                  "met": True, "stopped": "every candidate node in FP32", "runtimes": {}}
        ranking: list[tuple[str, ...]] | None = None

        def build(runtime: str, excluded: list[str]) -> Artifact:
            qconfig = QuantConfig(calibrator=config.calibrator, exclude_nodes=tuple(excluded),
                                  keep_first_fp32=config.keep_first_fp32,
                                  fp32_stem=config.fp32_stem,
                                  saturation_guard=config.saturation_guard,
                                  qat_epochs=config.qat_epochs)
            return _quantize(runtime, name, fp32_onnx, prepared, qconfig, stats, staging, steps)

        def rank(art: Artifact) -> list[tuple[str, ...]]:
            return _ranking(art, fp32_onnx, prepared,
                            QuantConfig(calibrator=config.calibrator,
                                        keep_first_fp32=config.keep_first_fp32,
                                        fp32_stem=config.fp32_stem,
                                        saturation_guard=config.saturation_guard), stats, staging)

        for runtime in [r for r in ("onnxruntime", "openvino") if r in config.runtimes]:
            art, value, excluded, ranking = _within_budget(
                runtime, config, allowed, fp32_value, ranking, budget, build, rank, evaluate,
                steps)
            drop = fp32_value - value
            met = allowed is None or drop <= allowed + 1e-9
            budget["runtimes"][runtime] = {"value": round(value, 6), "drop": round(drop, 6),
                                           "met": met, "reverted_to_fp32": excluded}
            art.quantization["reverted_to_fp32"] = excluded
            if not met:
                budget["met"] = False
                text = (f"{art.file}: metric drop {drop:.4f} stays over the budget "
                        f"{allowed:.4f} ({budget['stopped']})")
                steps.warn(text)
                warnings.append(text)
            artifacts.append(art)

    # 3. Accuracy of every other artifact on its runtime, against the FP32 source.
    for art in artifacts:
        if art.accuracy is None:
            evaluate(art)

    # 4. Benchmarks on each device unit that runs the artifact's runtime.
    protocol = config.bench
    bench_inputs = prepared.eval_inputs[0]
    entries = []
    for target in targets:
        for art in artifacts:
            if art.runtime != target.runtime:
                continue
            entry = _artifact_entry(art, staging, target)
            with steps.step(f"benchmark {art.file} on {target.label}") as update:
                row = run_target(target, staging.path(art.file), bench_inputs, protocol,
                                 progress=update)
            entry["bench"] = row["bench"]
            for key in ("unavailable", "unsupported_ops", "static_shapes"):
                if key in row:
                    entry[key] = row[key]
            if "unavailable" in row:
                warnings.append(f"{target.label} via {target.adapter} is not present here "
                                f"({row['unavailable']}); its figure is "
                                f"{row['bench'].get('label')}")
            entries.append(entry)
    warnings += _check_int8_speed(entries, steps)
    if pruning is not None:
        from edgeopt._prune_step import artifact_figures

        pruning.record["artifact"] = artifact_figures(fp32_onnx, pruning.pruned_tensors)
    return {
        **reporting.header(config, prepared),
        "steps": step_records,
        **({"pruning": pruning.record} if pruning is not None else {}),
        "artifacts": entries,
        **({"accuracy_budget": budget} if budget is not None and budget["allowed_drop"] is not None
           else {}),
        "warnings": warnings,
        "_artifacts": artifacts,
    }


def _within_budget(runtime: str, config: OptimizeConfig, allowed: float | None,
                   fp32_value: float, ranking, budget: dict, build, rank, evaluate,
                   steps: Steps):
    """Quantize for ``runtime``; while the metric drop is over ``allowed``, try the next
    most damaged node group in FP32 and keep it only if the drop shrinks (the metric is
    noisy: a revert that does not help is undone). Returns the artifact, its metric value,
    the nodes returned to FP32 and the ranking (reused by the next runtime)."""
    current: list[str] = []
    art = build(runtime, current)
    value = evaluate(art)
    best_drop, best = fp32_value - value, current
    tried: set[tuple[str, ...]] = set()
    while allowed is not None and best_drop > allowed + 1e-9:
        if ranking is None:
            ranking = rank(art)
        done = {*best, *art.quantization["excluded_nodes"]}
        left = [g for g in ranking if g not in tried and not set(g) <= done]
        if not left:
            break
        group = left[0]
        tried.add(group)
        trial = best + [n for n in group if n not in done]
        if config.max_fp32_nodes is not None and len(trial) > config.max_fp32_nodes:
            budget["stopped"] = f"--max-fp32-nodes {config.max_fp32_nodes} reached"
            break
        steps.warn(f"{runtime}: metric drop {best_drop:.4f} is over the budget {allowed:.4f}; "
                   f"trying {', '.join(group)} in FP32")
        current = trial
        art = build(runtime, current)
        value = evaluate(art)
        if fp32_value - value < best_drop:
            best_drop, best = fp32_value - value, current
    if current != best:                  # the last trial did not help: rebuild the best
        art = build(runtime, best)
        value = evaluate(art)
    if ranking is None and art.sensitivity:
        ranking = list(art.sensitivity)
    return art, value, best, ranking


def _quantize(runtime: str, name: str, fp32_onnx: Path, prepared: Prepared, qconfig,
              stats, staging: Staging, steps: Steps) -> Artifact:
    """One INT8 artifact for ``runtime`` with ``qconfig``, staged."""
    from edgeopt.calibrate import quantize_for_openvino, quantize_onnx_for_ort
    from edgeopt.calibrate.quantize import sensitivity_order

    if runtime == "onnxruntime":
        out = staging.path(f"{name}.int8-ort.onnx")
        samples, note = _qat_data(prepared) if qconfig.qat_epochs else (None, "")
        with steps.step("quantize INT8 for ONNX Runtime") as update:
            q = quantize_onnx_for_ort(fp32_onnx, out, prepared.calib, qconfig, update, stats=stats,
                                      qat_samples=samples, qat_note=note)
        return Artifact(out.name, "onnx", "int8", "onnxruntime",
                        quantization=_quant_record(q, prepared, qconfig),
                        sensitivity=tuple(sensitivity_order(q.layer_sqnr)))
    out = staging.path(f"{name}.int8-ov.xml")
    with steps.step("quantize INT8 for OpenVINO (NNCF)") as update:
        q = quantize_for_openvino(staging.path(f"{name}.fp32.xml"), out, prepared.calib,
                                  qconfig, update, stats=stats, fp32_onnx=fp32_onnx)
    return Artifact(out.name, "openvino-ir", "int8", "openvino",
                    companions=(out.with_suffix(".bin").name,),
                    quantization=_quant_record(q, prepared, qconfig))


def _qat_data(prepared: Prepared) -> tuple[list[dict[str, np.ndarray]], str]:
    """A reference model's fine-tuning set (disjoint from its calibration and evaluation
    sets), else the calibration samples."""
    reference = prepared.reference
    if reference is not None and reference.has_finetune_set:
        inputs, _labels = reference.finetune_set()
        return inputs, f"{prepared.source.spec}'s fine-tuning set"
    return prepared.calib, "the calibration samples"


def _ranking(art: Artifact, fp32_onnx: Path, prepared: Prepared, qconfig, stats,
             staging: Staging) -> list[tuple[str, ...]]:
    """Nodes most damaged by quantization first, from the per-layer SQNR of an ONNX Runtime
    QDQ graph (the OpenVINO artifact borrows it: its names derive from the ONNX nodes)."""
    from dataclasses import replace

    from edgeopt.calibrate import quantize_onnx_for_ort
    from edgeopt.calibrate.quantize import sensitivity_order

    if art.sensitivity:
        return list(art.sensitivity)
    probe = staging.path(".sensitivity-probe.onnx")
    try:
        q = quantize_onnx_for_ort(fp32_onnx, probe, prepared.calib,
                                  replace(qconfig, exclude_nodes=()), stats=stats)
    finally:
        probe.unlink(missing_ok=True)
    return sensitivity_order(q.layer_sqnr)


def _gain_summary(gains: dict[str, float]) -> dict:
    """How the calibrator's ranges compare with min-max in calibration SQNR."""
    if not gains:
        return {}
    values = np.array(list(gains.values()))
    return {"sqnr_gain_vs_minmax_db": {"mean": round(float(values.mean()), 3),
                                       "min": round(float(values.min()), 3),
                                       "max": round(float(values.max()), 3),
                                       "tensors_improved": int((values > 1e-9).sum()),
                                       "tensors": int(values.size)}}


def _step(steps: Steps, name: str, **extra) -> dict:
    return {"name": name, "seconds": round(steps.timings[name], 3), **extra}


def _torch_outputs(prepared: Prepared, samples, update=None, module=None) -> list[list[np.ndarray]]:
    import torch

    from edgeopt.convert import run_torch

    names = [n for n, _, _ in prepared.input_specs]
    module = prepared.source.module if module is None else module
    outs = []
    for i, sample in enumerate(samples):
        outs.append(run_torch(module,
                              tuple(torch.from_numpy(sample[n]) for n in names)))
        if update is not None:
            update(i + 1, len(samples))
    return outs


def _copy_onnx(src: Path, dst: Path) -> None:
    import onnx

    proto = onnx.load(str(src))  # pulls external data in, so the copy stands alone
    if proto.ByteSize() < 1_800_000_000:
        onnx.save(proto, str(dst))
    else:
        shutil.copyfile(src, dst)


def _quant_record(q, prepared: Prepared, qconfig) -> dict:
    return {
        "calibrator": qconfig.calibrator,
        "calibration": prepared.calib_note,
        "excluded_nodes": list(q.excluded_nodes),
        "notes": list(q.notes),
        # the worst layers: SQNR of the quantized activation against FP32, in dB
        **({"layer_sqnr_worst": list(q.layer_sqnr[:LAYER_SQNR_ROWS])} if q.layer_sqnr else {}),
        **({"integer_kernels": q.integer_kernels} if getattr(q, "integer_kernels", None) else {}),
    }


def _artifact_entry(art: Artifact, staging: Staging, target: Target) -> dict:
    from edgeopt.calibrate.pruning import deflated_size
    from edgeopt.convert import file_sha256

    files = [art.file, *art.companions]
    size = sum(staging.path(f).stat().st_size for f in files)
    return {
        "path": art.file,
        "files": files,
        "format": art.format,
        "precision": art.precision,
        "runtime": art.runtime,
        "device": target.label,
        "adapter": target.adapter,
        "size_bytes": size,
        "size_zipped_bytes": deflated_size([staging.path(f) for f in files]),
        "sha256": file_sha256(staging.path(art.file)),
        "sha256_files": {f: file_sha256(staging.path(f)) for f in files},
        "accuracy": art.accuracy,
        "quantization": art.quantization,
        "status": "ok",
    }


def _check_int8_speed(entries: list[dict], steps: Steps) -> list[str]:
    """An INT8 artifact not faster than FP32 on its runtime and device is never shipped silently."""
    warnings = []
    fp32 = {(e["runtime"], e["device"]): e for e in entries if e["precision"] == "fp32"}
    for e in entries:
        base = fp32.get((e["runtime"], e["device"]))
        if e["precision"] != "int8" or base is None:
            continue
        if e["bench"].get("label") != "measured" or base["bench"].get("label") != "measured":
            continue
        p50, p50_fp32 = e["bench"].get("p50_ms"), base["bench"].get("p50_ms")
        if p50 is None or p50_fp32 is None:
            continue
        e["speedup_vs_fp32"] = round(p50_fp32 / p50, 3)
        if p50 >= p50_fp32:
            e["status"] = "slower-than-fp32"
            text = (f"INT8 artifact {e['path']} is NOT faster than FP32 on {e['runtime']} "
                    f"{e['device']} (p50 {p50:.3f} ms vs {p50_fp32:.3f} ms): marked "
                    f"'slower-than-fp32'; do not ship it for this runtime")
            steps.warn(text)
            warnings.append(text)
    return warnings
