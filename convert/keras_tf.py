"""Keras 3 and TensorFlow models in.

A Keras 3 model (``.keras``) is loaded on Keras's torch backend (``KERAS_BACKEND=torch``,
no TensorFlow): its layers are then ``torch.nn.Module``s, so it goes through the same
export, parity checks and quantization as a PyTorch model. A TensorFlow SavedModel (a
folder holding ``saved_model.pb``) or a TFLite flatbuffer (``.tflite``) is converted to ONNX
with tf2onnx, under the ``edgeopt[tf]`` extra. Neither extra is needed for anything else,
and a missing one is named in a one-line error.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeopt.convert.errors import ModelLoadError, short_reason

KERAS_EXTRA = "pip install 'edgeopt[keras]'"
TF_EXTRA = "pip install 'edgeopt[tf]'"
TF2ONNX_OPSET = 17


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


@contextlib.contextmanager
def _torch_backend():
    """``KERAS_BACKEND=torch`` while Keras is imported (it reads it once, at import)."""
    saved = os.environ.get("KERAS_BACKEND")
    os.environ["KERAS_BACKEND"] = "torch"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("KERAS_BACKEND", None)
        else:
            os.environ["KERAS_BACKEND"] = saved


def _import_keras(spec: str):
    if "keras" not in sys.modules and importlib.util.find_spec("keras") is None:
        raise ModelLoadError(spec, "Keras models need Keras 3 (torch backend), which is not "
                                   "installed", KERAS_EXTRA)
    with _torch_backend():
        import keras
    version = getattr(keras, "__version__", "0")
    if int(version.split(".")[0]) < 3:
        raise ModelLoadError(spec, f"Keras {version} is installed; .keras models need "
                                   "Keras 3 on the torch backend", KERAS_EXTRA)
    backend = keras.backend.backend()
    if backend != "torch":
        raise ModelLoadError(spec, f"Keras was already loaded with the {backend} backend in "
                                   "this process", "run edgeopt in a fresh process, or set "
                                   "KERAS_BACKEND=torch")
    return keras


def _wrap(model: Any, count: int):
    """An ``nn.Module`` whose ``forward`` takes the inputs as positional tensors and returns
    a tensor or a tuple, calling the Keras model in inference mode."""
    import torch

    class KerasModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.keras_model = model

        def forward(self, *inputs):
            out = self.keras_model(inputs[0] if count == 1 else list(inputs), training=False)
            if isinstance(out, dict):
                out = tuple(out.values())
            return tuple(out) if isinstance(out, (list, tuple)) else out

    return KerasModule().eval()


def _keras_example(spec: str, model: Any, shapes) -> tuple[tuple, tuple[str, ...]]:
    """Example inputs (zeros, batch 1) and input names from the model's ``keras.Input``s, or
    from ``--input-shape`` where the model does not say (a dynamic dimension, no Input)."""
    import numpy as np
    import torch

    from edgeopt.convert.errors import InputShapeError

    inputs = list(getattr(model, "inputs", None) or [])
    names = tuple(str(getattr(t, "name", f"input_{i}")) for i, t in enumerate(inputs))
    if shapes is not None:
        dims = list(shapes.values()) if isinstance(shapes, dict) else [shapes]
        dtypes = ([str(t.dtype) for t in inputs] if len(inputs) == len(dims)
                  else ["float32"] * len(dims))
        names = tuple(shapes) if isinstance(shapes, dict) else names[:1]
        return tuple(torch.from_numpy(np.zeros(d, np.dtype(t)))
                     for d, t in zip(dims, dtypes, strict=True)), names
    if not inputs:
        msg = (f"'{spec}' does not say its input shape (a Keras model without keras.Input): "
               "pass --input-shape (e.g. 1,224,224,3)")
        raise InputShapeError(msg)
    example = []
    for name, tensor in zip(names, inputs, strict=True):
        shape = tuple(tensor.shape)
        if any(d is None for d in shape[1:]):
            msg = (f"'{spec}' input '{name}' has dynamic dimensions {list(shape)}: pass "
                   "--input-shape with concrete sizes (NAME=d0,d1,...;... for several inputs)")
            raise InputShapeError(msg)
        dims = (1, *shape[1:]) if shape and shape[0] is None else shape
        example.append(torch.from_numpy(np.zeros(dims, np.dtype(str(tensor.dtype)))))
    return tuple(example), names


def load_keras(spec: str, path: Path, shapes):
    """A ``.keras`` file as a torch-kind :class:`SourceModel` (kind ``keras``)."""
    from edgeopt.convert.load import SourceModel, file_sha256

    keras = _import_keras(spec)
    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as e:
        raise ModelLoadError(
            spec, f"not a loadable Keras model ({type(e).__name__}: {short_reason(e, 200)})",
            "save it with model.save('m.keras'); custom layers must be registered "
            "(keras.saving.register_keras_serializable) in a module imported first",
        ) from e
    example, names = _keras_example(spec, model, shapes)
    outputs = tuple(getattr(model, "output_names", None) or ())
    module = _wrap(model, len(example))
    return SourceModel(spec, "keras", path=path, sha256=file_sha256(path), module=module,
                       example_inputs=example, input_names=names,
                       output_names=outputs if len(set(outputs)) == len(outputs) else (),
                       extra={"keras_version": keras.__version__})


def convert_tensorflow(spec: str, path: Path):
    """A TensorFlow SavedModel folder or ``.tflite`` file, converted to ONNX by tf2onnx
    into this process's temporary folder: a :class:`SourceModel` (kind ``tflite`` or
    ``tensorflow-savedmodel``, run as ONNX from ``path``) whose ``spec`` and ``sha256`` stay
    the original's."""
    from edgeopt.convert.load import SourceModel, file_sha256, load_model

    missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
    what = "TFLite" if path.suffix.lower() == ".tflite" else "TensorFlow SavedModel"
    if missing:
        raise ModelLoadError(spec, f"{what} models are converted with tf2onnx, and "
                                   f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'}"
                                   " not installed", TF_EXTRA)
    out = Path(tempfile.mkdtemp(prefix="edgeopt-tf2onnx-")) / f"{path.stem or 'model'}.onnx"
    flag = "--tflite" if path.suffix.lower() == ".tflite" else "--saved-model"
    cmd = [sys.executable, "-m", "tf2onnx.convert", flag, str(path), "--output", str(out),
           "--opset", str(TF2ONNX_OPSET)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not out.is_file():
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        raise ModelLoadError(spec, f"tf2onnx could not convert this {what} "
                                   f"({short_reason(lines[-1] if lines else 'no output', 200)})")
    onnx_model = load_model(str(out))
    if path.is_dir():
        import hashlib

        digest = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(f.relative_to(path)).encode() + bytes.fromhex(file_sha256(f)))
        sha = digest.hexdigest()
    else:
        sha = file_sha256(path)
    kind = "tflite" if path.suffix.lower() == ".tflite" else "tensorflow-savedmodel"
    return SourceModel(spec, kind, path=out, sha256=sha, input_names=onnx_model.input_names,
                       output_names=onnx_model.output_names,
                       extra={"converted_from": what, "converter": "tf2onnx"})
