"""Older ONNX opsets and IR versions brought up to what every step of the pipeline supports.

ONNX Runtime's QDQ quantization needs opset 13 or later (per-axis DequantizeLinear); user
models arrive at 7-12, some at IR version 3 (initializers listed as graph inputs).
``onnx.version_converter`` upgrades the default domain; the model is upgraded when it is
loaded, before any other work, so what cannot be converted is refused up front, naming
the op and the opset. The caller checks the upgraded model's parity against the original,
like every conversion step.
"""

from __future__ import annotations

from edgeopt.convert.errors import ExportError, short_reason

__all__ = ["MIN_IR", "MIN_OPSET", "TARGET_OPSET", "default_opset", "needs_upgrade",
           "upgrade_opset"]

MIN_OPSET = 13              # below this, the model is upgraded
TARGET_OPSET = 17
MIN_IR = 7                  # the IR version an upgraded model gets at least


def default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def needs_upgrade(model) -> bool:
    """Whether :func:`upgrade_opset` changes ``model`` (a header is enough)."""
    return default_opset(model) < MIN_OPSET or model.ir_version < 4


def upgrade_opset(model, target: int = TARGET_OPSET):
    """``model`` at ``target`` if its default-domain opset is below MIN_OPSET, else as is,
    and at IR version MIN_IR or later with no initializer listed as a graph input where
    its IR version was older than 4; returns (model, the opset it had).

    Raises:
        ExportError: naming the op(s) the converter cannot bring from the model's opset.
    """
    from onnx import version_converter

    found = default_opset(model)
    old_ir = model.ir_version < 4
    if found >= MIN_OPSET and not old_ir:
        return model, found
    if found < MIN_OPSET:
        try:
            model = version_converter.convert_version(model, target)
        except Exception as e:
            step = f"ONNX opset {found} -> {target} upgrade"
            raise ExportError(step, _cannot_convert(model, found, target, e)) from e
    if old_ir:      # IR 3: every initializer was a graph input too; they are constants
        model = _without_initializer_inputs(model)
    model.ir_version = max(model.ir_version, MIN_IR)
    return model, found


def _without_initializer_inputs(model):
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {i.name for i in copy.graph.initializer}
    keep = [v for v in copy.graph.input if v.name not in initializers]
    del copy.graph.input[:]
    copy.graph.input.extend(keep)
    return copy


def _cannot_convert(model, found: int, target: int, error: Exception) -> str:
    """Which ops fail on their own (each converted as a one-node model), and why."""
    from onnx import helper, version_converter

    failing = []
    for op_type in sorted({n.op_type for n in model.graph.node}):
        node = next(n for n in model.graph.node if n.op_type == op_type)
        graph = helper.make_graph(
            [node], "probe", [helper.make_tensor_value_info(i, 1, None) for i in node.input if i],
            [helper.make_tensor_value_info(o, 1, None) for o in node.output if o])
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", found)])
        try:
            version_converter.convert_version(probe, target)
        except Exception:
            failing.append(op_type)
    ops = ", ".join(failing) if failing else "an op of the model"
    return (f"cannot bring {ops} from opset {found} to {target} "
            f"({short_reason(error, 200)}); re-export the model at opset {MIN_OPSET} or later")
