"""The INT8 jobs of one runtime in a run (``edgeopt.steps.quantize``): its settings from
the recipe, the saturation guard where a target needs it, and, for a runtime whose build
converts another's (``Backend.follows``), that runtime's settled settings."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from edgeopt.backends import QuantJob
from edgeopt.tradeoffs import leave_out_guard

__all__ = ["quant_config", "runtime_jobs"]


def runtime_jobs(state, backend, settled: dict) -> tuple[Any, str | None, tuple]:
    """``backend``'s INT8 job for a list of nodes to keep FP32 (its per-layer SQNR left to
    the build that stays), the runtime whose settled build it converts
    (:meth:`Backend.follows`; None: it weighs its own choices), and the nodes that
    runtime's budget returned to FP32, where its job starts from."""
    quant = state.recipe.quant
    guard = quant.saturation_guard and not leave_out_guard(state, backend.runtime)

    def job(excluded: list[str], lead=None) -> QuantJob:
        config = quant_config(quant, excluded, guard)
        if lead is not None:
            config = replace(lead, ov_int8=config.ov_int8, exclude_nodes=tuple(
                dict.fromkeys((*lead.exclude_nodes, *excluded))))
        return QuantJob(state.name, state.fp32_onnx, state.prepared, config, state.stats,
                        state.staging, state.progress, layer_sqnr=False)

    lead = backend.follows(job([]))
    leader, leader_guard = settled.get(lead, (None, None))
    if leader is None or leader_guard != guard:      # the guard is needed by one of them
        return job, None, ()
    return (lambda excluded: job(excluded, leader)), lead, leader.exclude_nodes


def quant_config(quant, excluded: list[str], guard: bool):
    from edgeopt.calibrate.quantize import QuantConfig

    return QuantConfig(calibrator=quant.calibrator, exclude_nodes=tuple(excluded),
                       keep_first_fp32=quant.keep_first_fp32, fp32_stem=quant.fp32_stem,
                       saturation_guard=guard, qat_epochs=quant.qat_epochs,
                       effort=quant.effort, ov_int8=quant.ov_int8)
