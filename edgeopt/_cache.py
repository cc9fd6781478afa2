"""A content-addressed cache of the pipeline's steps, so an unchanged re-run rebuilds nothing.

A step's key is the sha256 of what decides its result: the bytes of its input (the model,
or the file the step before it made), the data it reads, the recipe section it depends on,
and the versions of edgeopt (its source) and of the libraries that do the work. A changed
recipe therefore reuses every step before the change: only the calibrator changed, and the
export, the IR and the statistics come back from the cache.

An entry is a folder ``ROOT/v1/<step>/<key>/`` holding the step's files and ``entry.json``
(each file's sha256, and the step's records). It is written into a temporary folder beside
it and renamed into place, so a reader sees a whole entry or none, and two runs writing
the same key keep the first. A file is checked against its sha256 while it is copied out;
an entry that does not match (or cannot be read) is removed, a warning says so, and the
step runs again: a corrupt entry is never trusted.

The root is ``--cache-dir``, else ``$EDGEOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeopt``,
else ``~/.cache/edgeopt``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Cache", "default_root", "digest", "module_digest", "samples_digest"]

LAYOUT = "v1"


def default_root() -> Path:
    env = os.environ.get("EDGEOPT_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edgeopt"


def digest(*parts: Any) -> str:
    """sha256 of JSON-able parts (dict keys sorted)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def samples_digest(samples: Iterable[Mapping[str, np.ndarray]], labels=None) -> str:
    """sha256 of every sample's arrays (names, dtypes, shapes, bytes), in order."""
    h = hashlib.sha256()
    for sample in samples:
        for name in sorted(sample):
            a = np.ascontiguousarray(sample[name])
            h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
            h.update(memoryview(a).cast("B"))
    if labels is not None:
        a = np.ascontiguousarray(labels)
        h.update(f"labels|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def module_digest(module, example_inputs=()) -> str:
    """sha256 of a PyTorch module: its class source, structure, weights and example shapes."""
    import inspect

    h = hashlib.sha256()
    try:
        h.update(inspect.getsource(type(module)).encode())
    except (OSError, TypeError):
        h.update(type(module).__qualname__.encode())
    h.update(repr(module).encode())
    for name, tensor in module.state_dict().items():
        a = np.ascontiguousarray(tensor.detach().cpu().numpy())
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(memoryview(a).cast("B"))
    for t in example_inputs:
        h.update(f"{tuple(t.shape)}|{t.dtype}".encode())
    return h.hexdigest()


@functools.cache
def versions() -> dict[str, str | None]:
    """The versions the report lists (numpy, onnx, onnxscript, torch and every backend's
    runtime libraries) and a digest of edgeopt's own source (a code change is a new key)."""
    import edgeopt
    from edgeopt.report import library_versions

    found = library_versions()
    h = hashlib.sha256()
    packages = [Path(edgeopt.__file__).parent]
    for sub in ("convert", "calibrate", "runtimes"):
        module = __import__(f"edgeopt.{sub}", fromlist=["__file__"])
        packages.append(Path(module.__file__).parent)
    for package in packages:
        for py in sorted(package.rglob("*.py")):
            h.update(py.name.encode())
            h.update(py.read_bytes())
    found["edgeopt"] = f"{edgeopt.__version__}+{h.hexdigest()[:16]}"
    return found


class Cache:
    """The cache of one run; ``root`` None: off (every lookup misses, nothing is written)."""

    def __init__(self, root: Path | None, warn: Callable[[str], None] = lambda _t: None) -> None:
        self.root = None if root is None else Path(root).expanduser()
        self.warn = warn
        self.hits: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def key(self, step: str, **parts: Any) -> str:
        return digest(LAYOUT, step, parts, versions())

    def _entry(self, step: str, key: str) -> Path:
        assert self.root is not None
        return self.root / LAYOUT / step.replace(" ", "-") / key

    def restore(self, step: str, key: str, dest: Path | None) -> dict | None:
        """The step's records, its files copied into ``dest`` and checked; None on a miss
        or a corrupt entry (which is removed, with a warning)."""
        if self.root is None:
            return None
        entry = self._entry(step, key)
        try:
            manifest = json.loads((entry / "entry.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            return self._corrupt(step, entry, f"entry.json unreadable ({e})")
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict) or (files and dest is None):
            return self._corrupt(step, entry, "entry.json malformed")
        for name, sha in files.items():
            try:
                got = _copy_hashed(entry / name, dest / name)
            except OSError as e:
                return self._corrupt(step, entry, f"{name} unreadable ({e.strerror or e})")
            if got != sha:
                (dest / name).unlink(missing_ok=True)
                return self._corrupt(step, entry, f"{name} does not match its sha256")
        self.hits.append(step)
        return manifest.get("meta", {})

    def store(self, step: str, key: str, files: Mapping[str, Path], meta: dict) -> None:
        """Put the step's files and records under ``key`` (atomically; first writer wins)."""
        if self.root is None:
            return
        entry = self._entry(step, key)
        if entry.exists():
            return
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=entry.parent))
        except OSError as e:
            self.warn(f"cache {self.root} is not writable ({e.strerror or e}); "
                      f"{step} is not cached")
            return
        try:
            shas = {name: _copy_hashed(src, tmp / name) for name, src in files.items()}
            text = json.dumps({"step": step, "files": shas, "meta": meta}, default=_plain)
            (tmp / "entry.json").write_text(text, encoding="utf-8")
            os.rename(tmp, entry)
        except OSError:
            if not entry.exists():
                self.warn(f"cache entry for {step} could not be written; not cached")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _corrupt(self, step: str, entry: Path, why: str) -> None:
        self.warn(f"cache entry {entry} for {step} is corrupt ({why}): removed, rebuilding")
        trash = entry.with_name(f".trash-{os.getpid()}-{entry.name}")
        try:
            os.rename(entry, trash)
        except OSError:
            return None
        shutil.rmtree(trash, ignore_errors=True)
        return None


def _copy_hashed(src: Path, dst: Path) -> str:
    """Copy ``src`` to ``dst``, returning the sha256 of the bytes copied."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for block in iter(lambda: fin.read(1 << 20), b""):
            h.update(block)
            fout.write(block)
    return h.hexdigest()


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    msg = f"not JSON-able: {type(value).__name__}"
    raise TypeError(msg)
