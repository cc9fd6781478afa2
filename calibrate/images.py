"""Calibration images: decode with Pillow, preprocess in numpy (no torch).

One image becomes one model input, in this order: decode as RGB (or grayscale) ->
resize -> center crop -> channel order -> pixels * scale -> (x - mean) / std -> layout.

A preprocessing spec is ``key=value`` pairs separated by commas, or a .json/.yaml file
holding the same keys::

    resize=256,crop=224,mean=0.485:0.456:0.406,std=0.229:0.224:0.225,order=rgb,layout=nchw

========== ================================================================ ============
key        value                                                            default
========== ================================================================ ============
resize     N: shorter side to N (aspect kept); HxW: exactly H by W; none    none
crop       N or HxW: center crop after resize; none                         none
mean       one value, or one per channel separated by ':' (file: a list),   0
           in the units after ``scale`` (0-1 pixels by default), listed in
           the model's channel order
std        like ``mean``; every value > 0                                   1
scale      pixels are multiplied by it: 1/255, 0.5, 1 (raw 0-255 pixels)    1/255
order      rgb, bgr, or gray (one channel)                                  rgb
layout     nchw or nhwc                                                     nchw
interp     resize filter: nearest, bilinear, bicubic, lanczos               bilinear
========== ================================================================ ============
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.calibrate.errors import CalibrationDataError, PreprocessError
from edgeopt.runtimes.errors import short_reason

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ORDERS = ("rgb", "bgr", "gray")
LAYOUTS = ("nchw", "nhwc")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
KEYS = ("resize", "crop", "mean", "std", "scale", "order", "layout", "interp")
FILE_SUFFIXES = (".json", ".yaml", ".yml")
WHERE = "--preprocess"

Size = tuple[int, int]


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input (see the module docstring for each key)."""

    resize: int | Size | None = None
    crop: Size | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 1 / 255
    order: str = "rgb"
    layout: str = "nchw"
    interp: str = "bilinear"

    @property
    def channels(self) -> int:
        return 1 if self.order == "gray" else 3

    @property
    def output_size(self) -> Size | None:
        """(height, width) of every image it makes, where the spec says (a crop, or a
        resize to HxW); None when the size follows each image (resize=N keeps aspect)."""
        if self.crop is not None:
            return self.crop
        return self.resize if isinstance(self.resize, tuple) else None

    @property
    def keeps_integers(self) -> bool:
        """Pixels pass through unchanged (scale 1, mean 0, std 1): an integer input can take them."""
        return self.scale == 1 and all(m == 0 for m in self.mean) and all(s == 1 for s in self.std)

    def to_spec(self) -> str:
        """The compact ``key=value,...`` form; ``parse_preprocess`` reads it back."""
        parts = {
            "resize": _size_text(self.resize, square_as_one=False),
            "crop": _size_text(self.crop),
            "mean": ":".join(_number_text(v) for v in self.mean),
            "std": ":".join(_number_text(v) for v in self.std),
            "scale": "1/255" if math.isclose(self.scale, 1 / 255, rel_tol=1e-9)
            else _number_text(self.scale),
            "order": self.order,
            "layout": self.layout,
            "interp": self.interp,
        }
        return ",".join(f"{k}={v}" for k, v in parts.items())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for reports."""
        return {
            "resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
            "crop": list(self.crop) if self.crop else None,
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
            "order": self.order,
            "layout": self.layout,
            "interp": self.interp,
            "spec": self.to_spec(),
        }


def parse_preprocess(spec: str | Path | Mapping[str, Any] | Preprocess) -> Preprocess:
    """A Preprocess from ``key=value,...``, a .json/.yaml file, or a mapping of the same keys.

    Raises:
        PreprocessError: unknown keys or malformed values, every one listed in one line.
    """
    if isinstance(spec, Preprocess):
        return spec
    if isinstance(spec, Mapping):
        return _from_mapping(spec, WHERE)
    text = str(spec).strip()
    if text.lower().endswith(FILE_SUFFIXES):
        return _from_file(Path(text))
    if "=" not in text:
        where = f"{WHERE} {text!r}"
        raise PreprocessError(where, [
            "expected key=value pairs (e.g. resize=256,crop=224,mean=0.485:0.456:0.406,"
            "std=0.229:0.224:0.225) or a .json/.yaml file"])
    values: dict[str, str] = {}
    problems = []
    for item in (part.strip() for part in text.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            hint = (" (separate mean/std values with ':', e.g. mean=0.485:0.456:0.406)"
                    if sep == "" and _is_number(item) else "")
            problems.append(f"{item!r} is not key=value{hint}")
        elif key in values:
            problems.append(f"'{key}' given twice")
        else:
            values[key] = value.strip()
    try:
        preprocess = _from_mapping(values, WHERE)
    except PreprocessError as e:
        problems += e.problems
    if problems:
        raise PreprocessError(WHERE, problems)
    return preprocess


def reference_preprocess(described: Mapping[str, Any],
                         input_shape: Sequence[int]) -> Preprocess | None:
    """The image preprocessing a reference model's description implies, or None.

    A reference model describes how its own samples are made; mobilenet-v2's are random
    squares of photos resized to 224, scaled by 1/255, ImageNet mean/std. For image files
    the deterministic counterpart is: shorter side to the input size (unless the
    description gives ``resize``), center crop to the input size, the same scale, mean,
    std, channel order and layout. None when the description is not of 8-bit pixels
    (its scale is not 1/255, e.g. digits-cnn's 0-16 digits): the user must say.
    """
    try:
        scale = float(described.get("scale"))
    except (TypeError, ValueError):
        return None
    layout = str(described.get("layout", "nchw")).lower()
    order = {"rgb": "rgb", "bgr": "bgr", "gray": "gray", "grayscale": "gray"}.get(
        str(described.get("channel_order", "rgb")).lower())
    if not math.isclose(scale, 1 / 255, rel_tol=1e-6) or layout not in LAYOUTS or order is None:
        return None
    if len(input_shape) != 4:
        return None
    h, w = input_shape[2:] if layout == "nchw" else input_shape[1:3]
    values: dict[str, Any] = {"resize": min(h, w), "crop": [h, w], "scale": scale,
                              "order": order, "layout": layout,
                              "interp": described.get("interpolation", "bilinear")}
    for key in ("resize", "crop"):
        # numbers only: a description such as "random square ..." is not a size
        if isinstance(described.get(key), int) and not isinstance(described.get(key), bool):
            values[key] = described[key]
    for key in ("mean", "std"):
        if key in described:
            values[key] = described[key]
    try:
        return _from_mapping(values, "reference preprocessing")
    except PreprocessError:
        return None


def image_files(folder: Path) -> list[Path]:
    """The folder's image files (not its subfolders'), in name order; hidden files skipped."""
    return sorted(p for p in folder.iterdir() if is_image(p) and p.is_file())


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def load_image(path: Path, preprocess: Preprocess) -> np.ndarray:
    """One image file, preprocessed: float32, CHW or HWC as ``preprocess.layout`` says.

    Raises:
        CalibrationDataError: the file cannot be decoded, or it is smaller than the crop.
    """
    from PIL import Image

    try:
        with Image.open(path) as opened:
            # convert() decodes the whole file, so a truncated one fails here
            image = opened.convert("L" if preprocess.order == "gray" else "RGB")
    except Exception as e:
        reason = short_reason(e, 160)
        msg = f"calibration image {path}: cannot decode it ({type(e).__name__}: {reason})"
        raise CalibrationDataError(msg) from e
    if preprocess.resize is not None:
        image = _resize(image, preprocess.resize, preprocess.interp)
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if preprocess.crop is not None:
        pixels = _center_crop(pixels, preprocess.crop, path)
    if preprocess.order == "bgr":
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(preprocess.mean, dtype=np.float32)
    std = np.asarray(preprocess.std, dtype=np.float32)
    pixels = (pixels * np.float32(preprocess.scale) - mean) / std
    if preprocess.layout == "nchw":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels, dtype=np.float32)


# --- helpers ---------------------------------------------------------------------------

def _resize(image, size: int | Size, interp: str):
    from PIL import Image

    w, h = image.size
    if isinstance(size, int):
        # torchvision's Resize(int): the shorter side becomes `size`, the longer one follows
        if min(w, h) == size:
            return image
        if w <= h:
            target = (size, int(size * h / w))
        else:
            target = (int(size * w / h), size)
    else:
        target = (size[1], size[0])
        if target == (w, h):
            return image
    return image.resize(target, getattr(Image.Resampling, interp.upper()))


def _center_crop(pixels: np.ndarray, crop: Size, path: Path) -> np.ndarray:
    h, w = pixels.shape[:2]
    ch, cw = crop
    if ch > h or cw > w:
        msg = (f"calibration image {path}: it is {h}x{w} after resize, smaller than the "
               f"{ch}x{cw} crop; resize it to at least the crop size")
        raise CalibrationDataError(msg)
    top, left = round((h - ch) / 2), round((w - cw) / 2)
    return pixels[top : top + ch, left : left + cw]


def _from_file(path: Path) -> Preprocess:
    where = f"{WHERE} {path}"
    if not path.is_file():
        raise PreprocessError(where, ["no such file"])
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:
        reason = short_reason(e, 160)
        raise PreprocessError(where, [f"cannot read it ({type(e).__name__}: {reason})"]) from e
    if not isinstance(data, Mapping):
        raise PreprocessError(where, [f"holds {type(data).__name__}, not a mapping of keys "
                                      f"({', '.join(KEYS)})"])
    return _from_mapping(data, where)


def _from_mapping(values: Mapping[str, Any], where: str) -> Preprocess:
    problems: list[str] = []
    fields: dict[str, Any] = {}
    for key, value in values.items():
        key = str(key).lower()
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.append(f"unknown key '{key}'{hint} (known: {', '.join(KEYS)})")
            continue
        try:
            fields[key] = _PARSERS[key](value)
        except ValueError as e:
            problems.append(f"{key}={_value_text(value)}: {e}")
    channels = 1 if fields.get("order") == "gray" else 3
    for key in ("mean", "std"):
        if key in fields and len(fields[key]) not in (1, channels):
            problems.append(f"{key} has {len(fields[key])} values; give 1 or {channels} "
                            f"(one per channel of order={fields.get('order', 'rgb')})")
    if problems:
        raise PreprocessError(where, problems)
    return Preprocess(**fields)


def _parse_resize(value: Any) -> int | Size | None:
    if isinstance(value, (list, tuple)) or (isinstance(value, str) and "x" in value.lower()):
        return _parse_size(value)       # HxW: exactly that size
    if value is None or str(value).strip().lower() == "none":
        return None
    return _positive_int(value)         # N: the shorter side


def _parse_size(value: Any) -> Size | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    if isinstance(value, str):
        parts = value.lower().split("x")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        msg = "expected N or HxW (e.g. 224 or 224x192)"
        raise ValueError(msg)
    return (_positive_int(parts[0]), _positive_int(parts[1]))


def _positive_int(value: Any) -> int:
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        number = 0
    if isinstance(value, (bool, float)) or number < 1:
        msg = "expected a positive whole number of pixels, N or HxW (e.g. 224 or 224x192)"
        raise ValueError(msg)
    return number


def _parse_floats(value: Any) -> tuple[float, ...]:
    items = value.split(":") if isinstance(value, str) else (
        list(value) if isinstance(value, (list, tuple)) else [value])
    try:
        numbers = tuple(_to_float(v) for v in items)
    except (TypeError, ValueError):
        numbers = ()
    if not numbers or not all(math.isfinite(v) for v in numbers):
        msg = "expected numbers separated by ':' (e.g. 0.485:0.456:0.406)"
        raise ValueError(msg)
    return numbers


def _parse_std(value: Any) -> tuple[float, ...]:
    numbers = _parse_floats(value)
    if not all(v > 0 for v in numbers):
        msg = "every std must be > 0"
        raise ValueError(msg)
    return numbers


def _parse_scale(value: Any) -> float:
    try:
        if isinstance(value, str) and "/" in value:
            num, _, den = value.partition("/")
            number = _to_float(num) / _to_float(den)
        else:
            number = _to_float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        number = float("nan")
    if not (math.isfinite(number) and number > 0):
        msg = "expected a positive number or fraction (e.g. 1/255 or 1)"
        raise ValueError(msg)
    return number


def _choice(options: tuple[str, ...]):
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            msg = f"expected one of {', '.join(options)}"
            raise ValueError(msg)
        return text

    return parse


_PARSERS = {
    "resize": _parse_resize,
    "crop": _parse_size,
    "mean": _parse_floats,
    "std": _parse_std,
    "scale": _parse_scale,
    "order": _choice(ORDERS),
    "layout": _choice(LAYOUTS),
    "interp": _choice(INTERPOLATIONS),
}


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        msg = "a boolean is not a number"
        raise TypeError(msg)
    return float(str(value).strip()) if isinstance(value, str) else float(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _size_text(size: int | Size | None, square_as_one: bool = True) -> str:
    # resize=224 means "shorter side 224", so an exact square resize keeps its HxW form
    if size is None:
        return "none"
    if isinstance(size, int):
        return str(size)
    return str(size[0]) if square_as_one and size[0] == size[1] else f"{size[0]}x{size[1]}"


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)
