"""Older ONNX opsets brought up to one every step of the pipeline supports.

ONNX Runtime's QDQ quantization needs opset 13 or later (per-axis DequantizeLinear); user
models arrive at 7-12. ``onnx.version_converter`` upgrades the default domain; the caller
checks the upgraded model's parity against the original, like every conversion step.
"""

from __future__ import annotations

from edgeopt.convert.errors import ExportError, short_reason

__all__ = ["MIN_OPSET", "TARGET_OPSET", "default_opset", "upgrade_opset"]

MIN_OPSET = 13              # below this, the model is upgraded
TARGET_OPSET = 17


def default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(model, target: int = TARGET_OPSET):
    """``model`` at ``target`` if its default-domain opset is below MIN_OPSET, else as is;
    returns (model, the opset it had). Raises ExportError naming the op that cannot be
    converted."""
    from onnx import version_converter

    found = default_opset(model)
    if found >= MIN_OPSET:
        return model, found
    try:
        upgraded = version_converter.convert_version(model, target)
    except Exception as e:
        ops = sorted({n.op_type for n in model.graph.node})
        step = f"ONNX opset {found} -> {target} upgrade"
        problem = f"{short_reason(e, 200)} (the model's ops: {', '.join(ops)[:120]})"
        raise ExportError(step, problem) from e
    if upgraded.ir_version < 7:
        upgraded.ir_version = 7
    return upgraded, found
