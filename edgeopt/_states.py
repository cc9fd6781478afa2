"""State inputs: recurrent state a model takes in and gives back, to be fed to the next call.

An input is state when an output of the same dtype and shape carries its name with an
output affix: ``h``/``h0`` -> ``hn``, ``state`` -> ``stateN``, ``cache_in`` -> ``cache_out``,
``state`` -> ``new_state``. The report names them. With ``--calib random`` the states are
carried as the model carries them: zeros into the first sample, then each sample's state
outputs into the next, so calibration and evaluation see states the model makes, not noise.
A calibration factory yields whatever states it likes; they are used as given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

Spec = tuple[str, str, tuple]
_IN_SUFFIXES = ("_in", "_input", "_0", "0", "_prev", "_old")
_OUT_SUFFIXES = ("n", "_n", "out", "_out", "_output", "new", "_new", "next", "_next", "1", "_1")
_OUT_PREFIXES = ("new_", "next_", "out_")


def onnx_output_specs(path: Path) -> list[Spec]:
    """(name, numpy dtype name, shape; dynamic dims as strings) of each graph output."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph
    specs = []
    for value in graph.output:
        tensor = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        specs.append((value.name, dtype, tuple(d.dim_value if d.HasField("dim_value") else
                                               (d.dim_param or "?") for d in tensor.shape.dim)))
    return specs


def _variants(name: str) -> set[str]:
    lower = name.lower()
    bases = {lower} | {lower[: -len(s)] for s in _IN_SUFFIXES
                       if lower.endswith(s) and len(lower) > len(s)}
    return ({b + s for b in bases for s in _OUT_SUFFIXES}
            | {p + b for b in bases for p in _OUT_PREFIXES})


def _same_shape(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x == y or not isinstance(x, int) or not isinstance(y, int)
                                    for x, y in zip(a, b, strict=True))


def state_pairs(inputs: Sequence[Spec], outputs: Sequence[Spec]) -> dict[str, str]:
    """State input -> the output that gives its next value (see the module's rule)."""
    pairs = {}
    for name, dtype, shape in inputs:
        wanted = _variants(name)
        match = [o for o, odtype, oshape in outputs
                 if o.lower() in wanted and odtype == dtype and _same_shape(shape, oshape)]
        if match:
            pairs[name] = match[0]
    return pairs


def carry_states(samples: list[dict[str, np.ndarray]], pairs: dict[str, str],
                 output_names: Sequence[str],
                 run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]
                 ) -> list[dict[str, np.ndarray]]:
    """``samples`` with their state inputs replaced: zeros into the first, then each
    sample's state outputs (``run(sample)``) into the next."""
    if not samples or not pairs:
        return samples
    state = {name: np.zeros_like(samples[0][name]) for name in pairs}
    carried = []
    for sample in samples:
        sample = {**sample, **state}
        outputs = dict(zip(output_names, run(sample), strict=False))
        state = {name: np.asarray(outputs[out], dtype=sample[name].dtype).reshape(
                 sample[name].shape) for name, out in pairs.items()}
        carried.append(sample)
    return carried


def carry_step(state) -> None:
    """The pipeline step (``edgeopt.steps.carry_states``): random data for a model with
    state inputs gets each sample's state from the source model's previous run (zeros
    first), as it is run."""
    from edgeopt.backends import onnx_runner

    prepared, data = state.prepared, state.recipe.data
    if not prepared.states or data.calib != "random":
        return
    with state.progress.step("carry state inputs"):
        loaded = onnx_runner().load(prepared.source.path)
        names = tuple(spec.name for spec in getattr(loaded, "outputs", ()))
        prepared.calib = carry_states(prepared.calib, prepared.states, names, loaded.run)
        if data.eval is None:
            prepared.eval_inputs = carry_states(prepared.eval_inputs, prepared.states, names,
                                                loaded.run)
    state.record_step("carry state inputs", states=dict(prepared.states))
