"""Palettization's rules and checks: its error, the arguments, which weights pay at a setting
(``PAY_RULE``, ``MIN_FAN_IN``), reading the model, the report's per-layer row.

Shared by the k-means palettization and the uniform baseline in
:mod:`edgeopt.calibrate.palettize`.
"""

from __future__ import annotations

from pathlib import Path

from edgeopt.calibrate._palette_graph import Palette, Target
from edgeopt.calibrate.errors import CalibrationError
from edgeopt.runtimes.errors import short_reason

PAY_RULE = ("at least 16 x 2^bits elements, rank >= 2 (never a bias), and the tables no "
             "larger than the packed indices")
UINT4_OPSET = 21


class PalettizeError(CalibrationError):
    """Palettization cannot run as asked: bad bits or group size, or nothing to palettize."""


def palettize_error(message: str, cause: BaseException | None = None) -> PalettizeError:
    error = PalettizeError(message)
    error.__cause__ = cause
    return error


# Layers whose output channels have fewer weights than this stay as they are: in a CNN
# those are the stem and the first pointwise/depthwise layers, a small share of the
# weights, so palettizing them saves little of the file and costs much of the accuracy.
MIN_FAN_IN = 64


def index_bytes(count: int, bits: int) -> int:
    return (count + 1) // 2 if bits <= 4 else count


def scaled(target: Target, group_size: int) -> bool:
    """Float tables shared by several channels hold the weights divided by a per-channel
    scale (BatchNorm-folded channels differ in range by orders of magnitude)."""
    return group_size > 1 and not target.codes


def pays(target: Target, bits: int, group_size: int) -> str | None:
    """None if palettizing pays, else why not."""
    k = 1 << bits
    size = target.matrix.size
    lut_bytes = (target.channels // group_size) * k * (1 if target.codes else 2)
    lut_bytes += 2 * target.channels if scaled(target, group_size) else 0
    if size < 16 * k:
        return f"{size} elements < 16 x 2^{bits}"
    if size // target.channels < MIN_FAN_IN:
        return (f"{size // target.channels} weights per output channel < {MIN_FAN_IN} "
                "(small early layers: little to save, much to lose)")
    if lut_bytes > index_bytes(size, bits):
        return f"tables ({lut_bytes} B) larger than the packed indices at group size {group_size}"
    if lut_bytes + index_bytes(size, bits) >= target.original_bytes:
        return f"{bits}-bit indices and tables are no smaller than the weights"
    return None


def load_model(model: Path, bits: int):
    import onnx

    path = Path(model)
    try:
        proto = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, OSError...
        msg = f"cannot read ONNX model {path.name}: {short_reason(e, 200)}"
        raise palettize_error(msg, e) from e
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if bits <= 4 and opset < UINT4_OPSET:
        from onnx import version_converter

        try:   # packed uint4 needs Cast-21; op semantics that changed meanwhile are converted
            proto = version_converter.convert_version(proto, UINT4_OPSET)
        except Exception as e:
            msg = (f"cannot convert {path.name} from opset {opset} to {UINT4_OPSET} for uint4 "
                   f"indices: {short_reason(e, 200)}; use bits 5-8 (uint8 indices)")
            raise palettize_error(msg, e) from e
    return proto


def deflated(path: Path) -> int:
    from edgeopt.calibrate.pruning import deflated_size

    return deflated_size([path])


def check_args(model: Path, out: Path, bits: int, group_size: int | None,
                max_accuracy_drop: float | None, evaluate) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        msg = f"bits must be an integer from 2 to 8, got {bits!r}"
        raise PalettizeError(msg)
    if group_size is None:
        group_size = 1
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        msg = f"group size must be a positive number of output channels, got {group_size!r}"
        raise PalettizeError(msg)
    if max_accuracy_drop is not None and (evaluate is None or not max_accuracy_drop >= 0):
        msg = ("max_accuracy_drop needs an evaluate callable and a drop >= 0, got "
               f"{max_accuracy_drop!r}" + ("" if evaluate is not None else " without evaluate"))
        raise PalettizeError(msg)
    if not Path(model).is_file():
        msg = f"model {model} does not exist"
        raise PalettizeError(msg)
    if Path(out).resolve() == Path(model).resolve():
        msg = f"output {out} is the input model; choose another path"
        raise PalettizeError(msg)
    if not Path(out).parent.is_dir():
        msg = f"output folder {Path(out).parent} does not exist"
        raise PalettizeError(msg)
    return group_size


def select_targets(targets: list[Target], bits: int, group_size: int, model: Path) -> tuple[list, dict]:
    """Targets that pay at ``bits`` and the reasons of the others; a group size that does not
    divide a target's channels is the user's mistake."""
    chosen, kept = [], {}
    for t in targets:
        if t.matrix.size >= 16 << bits and t.channels % group_size:
            from math import gcd

            common = 0
            for other in targets:
                common = gcd(common, other.channels)
            msg = (f"group size {group_size} does not divide the {t.channels} output channels "
                   f"of '{t.name}' in {Path(model).name}; use a divisor of {common}")
            raise PalettizeError(msg)
        reason = pays(t, bits, group_size)
        if reason is None:
            chosen.append(t)
        else:
            kept[t.name] = reason
    if not chosen:
        detail = "; ".join(f"{n}: {r}" for n, r in list(kept.items())[:3]) or "no Conv/MatMul/Gemm weights"
        msg = (f"nothing to palettize in {Path(model).name} at {bits} bits, group size "
               f"{group_size} ({detail})")
        raise PalettizeError(msg)
    return chosen, kept


def layer_row(t: Target, bits, group_size: int, palette: Palette | None, reason) -> dict:
    return {"name": t.name, "ops": list(t.ops), "shape": list(t.shape), "bits": bits,
            "groups": t.channels // group_size if palette is not None else None,
            "original_bytes": t.original_bytes,
            "palettized_bytes": palette.bytes if palette is not None else t.original_bytes,
            "weight_sqnr_db": palette.sqnr_db if palette is not None else None,
            "kept_unpalettized": reason}
