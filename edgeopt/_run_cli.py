"""`edgeopt run MODEL --inputs IN.npz --out OUT.npz [--adapter NAME]`: one inference, saved.

Inputs stacking N samples for a model with a fixed batch (batch 1) run sample by sample,
their outputs stacked the same way.

What ``edgeopt bench --emulate`` runs inside the aarch64 sysroot, so it imports numpy and
edgeopt.runtimes only (a runtime-only install: no torch, onnx or rich). When
``EDGEOPT_EMULATED`` is set (``qemu-aarch64:cortex-a76``), it is running under emulation.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from edgeopt.errors import UsageError, short_reason


def run_model(args) -> int:
    from edgeopt.runtimes import get_adapter
    from edgeopt.runtimes.emulation import run_in_chunks

    model, inputs_path, out = Path(args.model), Path(args.inputs), Path(args.out)
    if not model.is_file():
        msg = f"model {model} does not exist"
        raise UsageError(msg)
    feeds = _load_inputs(inputs_path)
    if out.suffix != ".npz":
        msg = f"--out {out} must be a .npz file"
        raise UsageError(msg)
    if not out.parent.is_dir():
        msg = f"--out folder {out.parent} does not exist"
        raise UsageError(msg)
    if args.adapter is None:
        from edgeopt.backends import onnx_runner

        args.adapter = onnx_runner().host_adapter
    loaded = get_adapter(args.adapter).load(model)
    expected = {spec.name: spec for spec in loaded.inputs}
    missing, extra = sorted(set(expected) - set(feeds)), sorted(set(feeds) - set(expected))
    if missing or extra:
        msg = (f"{inputs_path} does not match {model.name}'s inputs: missing "
               f"{', '.join(missing) or 'none'}, unknown {', '.join(extra) or 'none'} "
               f"(model inputs: {', '.join(expected)})")
        raise UsageError(msg)
    for name, spec in expected.items():
        feeds[name] = feeds[name].astype(spec.dtype, copy=False)
    outputs = run_in_chunks(loaded, feeds)
    _save_atomic(out, {spec.name: np.asarray(v) for spec, v in zip(loaded.outputs, outputs,
                                                                  strict=True)})
    return 0


def _load_inputs(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        msg = f"--inputs {path} does not exist"
        raise UsageError(msg)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        msg = f"--inputs {path} is not a readable .npz file: {short_reason(e, 200)}"
        raise UsageError(msg) from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        msg = f"--inputs {path} must be a .npz of input name -> array, not a single array"
        raise UsageError(msg)
    try:
        with data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:   # object arrays, damage
        msg = f"--inputs {path} is not a readable .npz file: {short_reason(e, 200)}"
        raise UsageError(msg) from e


def _save_atomic(out: Path, arrays: dict[str, np.ndarray]) -> None:
    # Written beside the target and renamed: an interrupted run leaves no half-written file.
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
