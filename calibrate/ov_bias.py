"""NNCF's full bias correction with one OpenVINO compile per corrected layer instead of two.

NNCF's ``BiasCorrection`` (nncf 3.x) cuts, for each layer with a bias, a subgraph from the
layer to the next layers with biases, compiles it to measure the layer's mean output shift
on its samples, sets the corrected bias, and compiles the subgraph again to run the same
samples once more for the next layers' inputs. The two compiles differ only in the bias
constant, and a compile of a dozen-op subgraph costs 25-50 ms on a 2-core machine (OpenVINO's
transformation pipeline, whatever the graph's size): half of the full correction's time
on mobilenet-v2. Here the bias constant of the layer being corrected becomes an input of
its subgraph, which is compiled once and run with the old bias, then with the new one.
The subgraphs compute the same values either way (the CPU plugin runs a bias input as it
runs a bias constant: checked output by output in tests/calibrate/test_ov_bias.py), so the
corrected biases, and the quantized model, are those of NNCF's own algorithm.

Everything else is NNCF's: which layers, the subgraphs, the statistics, the threshold. A
subgraph whose bias constant is not where NNCF's own bias update looks for it keeps NNCF's
two compiles.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import numpy as np

BIAS_INPUT = "edgeopt_bias_correction_bias"
_OVERRIDDEN = {"_prepare_subgraph": ("node", "model", "nncf_graph", "subgraph_data"),
               "_compute_bias_shift": ("node", "model", "feed_dicts", "statistic_points"),
               "_correct_bias": ("model", "bias_correction_command"),
               "_collect_new_stats": ("model", "feed_dicts", "subgraph_data"),
               "_get_fp_outputs": ("statistic_points", "node_name")}      # called


class _BiasInput:
    """The bias input of one subgraph: its element type, shape and current value."""

    def __init__(self, const) -> None:
        self.dtype = const.get_element_type()
        self.shape = tuple(const.get_output_shape(0))
        self.value = const.get_data().copy()

    def set(self, value: np.ndarray) -> None:
        """As NNCF's bias update makes its constant (OVModelTransformer._set_const_value)."""
        value = np.reshape(np.asarray(value), self.shape)
        wanted = self.dtype.to_dtype()
        if value.dtype != wanted:
            value = np.clip(value, np.finfo(wanted).min, np.finfo(wanted).max).astype(wanted)
        self.value = value


def bias_as_input(subgraph, node_name: str, port: int) -> _BiasInput | None:
    """Turn the bias constant of ``node_name`` (the constant NNCF's bias update replaces:
    behind input ``port`` of the Add after the node, through any Convert) into the input
    BIAS_INPUT of ``subgraph``, in place; None (and ``subgraph`` unchanged) when it is not
    there."""
    import openvino as ov

    op = next((o for o in subgraph.get_ops() if o.get_friendly_name() == node_name), None)
    adds = [] if op is None else [t.get_node() for t in op.output(0).get_target_inputs()
                                  if t.get_node().get_type_name() == "Add"]
    if len(adds) != 1:
        return None
    target = adds[0].input(port)
    while (source := target.get_source_output().get_node()).get_type_name() != "Constant":
        if not source.inputs():
            return None
        target = source.input(0)
    if source.get_element_type() not in (ov.Type.f32, ov.Type.f16):
        return None                          # e.g. bf16, which numpy cannot hold
    bias = _BiasInput(source)
    param = ov.opset13.parameter(list(bias.shape), bias.dtype, name=BIAS_INPUT)
    param.output(0).get_tensor().set_names({BIAS_INPUT})
    target.replace_source_output(param.output(0))
    subgraph.add_parameters([param])
    subgraph.validate_nodes_and_infer_types()
    return bias


def _base_class():
    from nncf.quantization.algorithms.bias_correction.algorithm import BiasCorrection

    return BiasCorrection


def fits(base: type | None = None) -> bool:
    """Whether NNCF's BiasCorrection has the methods this one overrides or calls, with the
    parameters it passes."""
    base = base or _base_class()
    for name, params in _OVERRIDDEN.items():
        method = getattr(base, name, None)
        if method is None or tuple(inspect.signature(method).parameters)[1:] != params:
            return False
    return True


def _one_compile_class():
    from nncf.common.factory import EngineFactory
    from nncf.common.tensor_statistics.statistical_functions import mean_per_channel
    from nncf.openvino.graph.node_utils import get_add_bias_node
    from nncf.tensor import Tensor
    from nncf.tensor import functions as fns

    class OneCompileBiasCorrection(_base_class()):
        """NNCF's BiasCorrection, each subgraph compiled once (see the module's text)."""

        _sub: Any = None
        _bias: _BiasInput | None = None
        _engine: Any = None

        def _prepare_subgraph(self, node, model, nncf_graph, subgraph_data):
            sub = super()._prepare_subgraph(node, model, nncf_graph, subgraph_data)
            port = get_add_bias_node(node, nncf_graph).layer_attributes.get_const_port_ids()[0]
            self._sub, self._engine = sub, None
            self._bias = bias_as_input(sub, node.node_name, port)
            return sub

        def _feeds(self, feed_dicts: list) -> list:
            return [{**feed, BIAS_INPUT: self._bias.value} for feed in feed_dicts]

        def _compute_bias_shift(self, node, model, feed_dicts, statistic_points):
            if self._bias is None or model is not self._sub:
                return super()._compute_bias_shift(node, model, feed_dicts, statistic_points)
            output_fp = self._get_fp_outputs(statistic_points, node.node_name)
            name = self._backend_entity.get_output_name(model, node.node_name, 0)
            self._engine = EngineFactory.create(model)
            axis = node.metatype.output_channel_axis
            q_outputs = [mean_per_channel(self._backend_entity.process_model_output(
                self._engine.infer(feed), name), axis) for feed in self._feeds(feed_dicts)]
            return fns.stack(output_fp) - fns.mean(fns.stack(q_outputs), axis=0)

        def _correct_bias(self, model, bias_correction_command):
            if self._bias is None or model is not self._sub:
                return super()._correct_bias(model, bias_correction_command)
            self._bias.set(bias_correction_command.bias_value)
            return model

        def _collect_new_stats(self, model, feed_dicts, subgraph_data):
            if self._bias is None or self._engine is None or model is not self._sub:
                return super()._collect_new_stats(model, feed_dicts, subgraph_data)
            for feed in self._feeds(feed_dicts):
                output = self._engine.infer(feed)
                for node_name, port in subgraph_data.output_ids:
                    name = self._backend_entity.get_output_name(model, node_name, port)
                    self._fp_inputs[(node_name, port)].append(Tensor(output[name]))
            self._sub = self._engine = self._bias = None
            return None

    return OneCompileBiasCorrection


@contextlib.contextmanager
def one_compile_bias_correction() -> Iterator[bool]:
    """While open, NNCF's post-training pipeline builds its full bias correction from
    OneCompileBiasCorrection; yields False (and changes nothing) when this NNCF's
    BiasCorrection is not the one it was written for."""
    from nncf.quantization.algorithms.post_training import pipeline

    try:
        ours = _one_compile_class() if fits() else None
    except ImportError:                  # another NNCF's layout
        ours = None
    if ours is None or getattr(pipeline, "BiasCorrection", None) is not _base_class():
        yield False
        return
    pipeline.BiasCorrection = ours
    try:
        yield True
    finally:
        pipeline.BiasCorrection = _base_class()
