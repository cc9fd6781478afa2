"""The pipeline's steps through the cache (:mod:`edgeopt._cache`): each step's key names
what decides its result, and a hit replays the step's files, records and warnings.

    export      the model's bytes (weights and class source, or the ONNX file), its input
                and output names, the parity samples
    convert     the FP32 ONNX's bytes, the parity samples, the runtime
    reference   the FP32 ONNX's bytes, the evaluation samples
    statistics  the FP32 ONNX's bytes, the calibration samples
    quantize    the FP32 ONNX's bytes, the calibration samples, the quantization settings
                (calibrator, excluded nodes, ...), the runtime
    evaluate    the artifact's bytes, the evaluation samples and labels, the FP32
                reference, the metric
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._cache import Cache, default_root, module_digest, samples_digest
from edgeopt.convert.load import file_sha256 as file_digest

__all__ = ["DataKeys", "cached_quantize", "open_cache", "through_cache"]


def open_cache(recipe, warn: Callable[[str], None]) -> Cache:
    """The run's cache: ``recipe.cache_dir`` or the default root; off with ``cache: false``."""
    if not recipe.cache:
        return Cache(None)
    return Cache(Path(recipe.cache_dir) if recipe.cache_dir else default_root(), warn)


class DataKeys:
    """Content digests of what the run reads, each computed once, when first needed."""

    def __init__(self, state) -> None:
        self._state = state

    @functools.cached_property
    def calib(self) -> str:
        return samples_digest(self._state.prepared.calib)

    @functools.cached_property
    def eval(self) -> str:
        prepared = self._state.prepared
        return samples_digest(prepared.eval_inputs, prepared.labels)

    @functools.cached_property
    def parity(self) -> str:
        return samples_digest(self._state.parity_inputs)

    def model(self) -> str:
        """The model as it is exported now (after pruning, when pruned)."""
        state = self._state
        source = state.prepared.source
        if "digest" in source.extra:        # digested in the PyTorch child
            return source.extra["digest"]
        if source.is_torch:
            return module_digest(state.module, source.example_inputs)
        return file_digest(source.path)

    @functools.cached_property
    def fp32_onnx(self) -> str:
        """The exported FP32 ONNX (asked for only once it is written; it never changes)."""
        return file_digest(self._state.fp32_onnx)

    @staticmethod
    def file(path: Path) -> str:
        return file_digest(path)


def through_cache(state, step: str, parts: Callable[[], dict] | None, files: list[str],
                  build: Callable[[], dict | None], dest: Path | None = None) -> tuple[dict, bool]:
    """Run ``build`` (which writes ``files`` into ``dest``, default the staging folder, and
    returns JSON-able facts), or replay it from the cache entry of ``parts()`` (what decides
    the result; None: never cached); returns the
    facts and whether they came from the cache."""
    cache, progress = state.cache, state.progress
    dest = state.staging.dir if dest is None else dest
    key = cache.key(step, **parts()) if cache.enabled and parts is not None else None
    if key is not None:
        start = time.perf_counter()
        meta = cache.restore(step, key, dest)
        if meta is not None:
            seconds = time.perf_counter() - start
            named = {r["name"] for r in meta["records"]}
            for i, name in enumerate(meta["steps"]):
                progress.cached(name, seconds if i == 0 else 0.0)
                if name not in named:
                    state.record_step(name, cached=True)
            for record in meta["records"]:
                state.record_step(**{**record, "cached": True})
            for text in meta["warnings"]:
                state.warn(text)
            return meta["extra"], True
    log, records, warnings = len(progress.log), len(state.step_records), len(state.warnings)
    extra = build() or {}
    if key is not None:
        cache.store(step, key, {f: dest / f for f in files},
                    {"steps": progress.log[log:], "records": state.step_records[records:],
                     "warnings": state.warnings[warnings:], "extra": extra})
    return extra, False


def cached_quantize(state, backend, job):
    """``backend.quantize(job)``, or its artifact from the cache."""
    def build() -> dict:
        return {"artifact": artifact_facts(backend.quantize(job))}

    def parts() -> dict:
        return {"onnx": state.keys.fp32_onnx, "calib": state.keys.calib,
                "config": dataclasses.asdict(job.config), "runtime": backend.runtime,
                "name": job.name, "variant": job.variant, "layer_sqnr": job.layer_sqnr,
                "model": state.recipe.model if job.config.qat_epochs else None}

    facts, _ = through_cache(state, "quantize", parts, list(job.int8_files(backend)), build)
    return artifact_from(facts["artifact"])


def cached_layer_sqnr(state, backend, job, art):
    """``art``, built by ``job`` without its per-layer SQNR (``job.layer_sqnr`` False: a
    weighing variant), given the figures and sensitivity that build would have given it,
    or the cache's; ``art`` as it is when its build made them."""
    from edgeopt.backends.base import with_layer_sqnr

    path = job.path(art.file)

    def build() -> dict:
        with state.progress.step(job.step("layer SQNR")):
            return {"rows": backend.layer_sqnr(path, job)}

    def parts() -> dict:
        return {"file": state.keys.file(path), "onnx": state.keys.fp32_onnx,
                "calib": state.keys.calib, "config": dataclasses.asdict(job.config),
                "runtime": backend.runtime}

    if job.layer_sqnr:
        return art
    facts, _ = through_cache(state, "layer-sqnr", parts, [], build)
    if facts["rows"] is not None:
        art.quantization = with_layer_sqnr(art.quantization or {}, facts["rows"])
        art.sensitivity = backend.sensitivity_from(facts["rows"])
    return art


# ------------------------------------------------------------------ (de)serialising

def artifact_facts(art) -> dict:
    facts = dataclasses.asdict(art)
    facts["sensitivity"] = [list(g) for g in art.sensitivity]
    return facts


def artifact_from(facts: dict):
    from edgeopt.backends import Artifact

    return Artifact(**{**facts, "companions": tuple(facts["companions"]),
                       "sensitivity": tuple(tuple(g) for g in facts["sensitivity"])})


def save_outputs(path: Path, outs) -> list[int]:
    """Every output of every sample into ``path`` (.npz); returns [samples, outputs]."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:     # np.savez's layout, one array at a time
        for i, sample in enumerate(outs):
            for j, o in enumerate(sample):
                with z.open(f"s{i}_o{j}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asarray(o), allow_pickle=False)
    return [len(outs), len(outs[0]) if len(outs) else 0]


def load_outputs(path: Path, count: tuple[int, int]):
    """The outputs :func:`save_outputs` wrote, kept on disk, read one sample at a time."""
    from edgeopt._outputs import SpilledOutputs

    n, k = count
    with np.load(path, allow_pickle=False) as data:
        return SpilledOutputs([data[f"s{i}_o{j}"] for j in range(k)] for i in range(n))


_ARRAYS = ("reservoir", "channel_max", "channel_sum", "sample_peaks")  # TensorStats, .npz


def save_stats(path: Path, stats: dict) -> list[dict]:
    """The reservoirs and per-channel maxima into ``path`` (.npz); returns the scalar
    fields, in order."""
    arrays = {f"{field}_{i}": getattr(s, field) for i, s in enumerate(stats.values())
              for field in _ARRAYS if getattr(s, field) is not None}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return [{f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name not in _ARRAYS}
            for s in stats.values()]


def load_stats(path: Path, scalars: list[dict]) -> dict[str, Any]:
    from edgeopt.calibrate.stats import TensorStats

    with np.load(path, allow_pickle=False) as data:
        return {s["name"]: TensorStats(**s, **{field: data[f"{field}_{i}"] for field in _ARRAYS
                                              if f"{field}_{i}" in data})
                for i, s in enumerate(scalars)}
