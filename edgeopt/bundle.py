"""App bundles on disk: deterministic zip writing, safe reading, the manifest and its checksums.

A bundle is a flat zip: the model in the target's format, ``manifest.json``, reference inputs
and outputs (``reference.npz``) and whatever else the target needs. Writing is deterministic
(sorted members, fixed timestamps and permissions, one deflate level), so the same inputs give
the same bytes. Reading checks every member header before anything is extracted: no absolute
paths, no ``..``, no symlinks, no duplicates, no encrypted members, sizes within limits; then
every member is streamed through sha256 in fixed-size chunks, so memory stays bounded
whatever the zip claims (``manifest.json`` and ``reference.npz``, read whole, are capped).

Imports only the standard library and numpy: ``edgeopt verify`` runs in the runtime-only
install.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from edgeopt.errors import EdgeoptError, short_reason

__all__ = ["MANIFEST", "REFERENCE", "SCHEMA_VERSION", "Bundle", "BundleError", "BundleLimits",
           "BundleRejected", "check_files", "extract_private", "npz_bytes", "open_bundle",
           "read_npz", "read_reference", "write_bundle"]

MANIFEST = "manifest.json"
REFERENCE = "reference.npz"
SCHEMA_VERSION = 1
# Fixed metadata for every member: the earliest date zip can store, a regular file, rw-r--r--.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
MEMBER_ATTR = (stat.S_IFREG | 0o644) << 16
DEFLATE_LEVEL = 9
MAX_MEMBERS = 64
CHUNK = 1 << 20                  # members are inflated, hashed and written this much at a time


class BundleError(EdgeoptError):
    """The file is not a bundle edgeopt can read (not a zip, no manifest, unknown schema)."""


class BundleRejected(BundleError):
    """A bundle that is unsafe to open or that fails verification; nothing was extracted."""


@dataclass(frozen=True)
class BundleLimits:
    """Upper bounds checked on member headers before anything is read or written."""

    max_member_bytes: int = 2 << 30        # one member, uncompressed
    max_total_bytes: int = 4 << 30         # all members, uncompressed
    max_members: int = MAX_MEMBERS
    max_manifest_bytes: int = 1 << 20      # manifest.json, parsed in memory
    max_reference_bytes: int = 64 << 20    # reference.npz, decoded in memory


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- writing ---------------------------------------------------------------------------

def _zip_bytes(members: dict[str, bytes], compress: bool) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w") as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.external_attr = MEMBER_ATTR
            info.create_system = 3          # unix, whatever machine writes it
            info.compress_type = method
            zf.writestr(info, members[name], compress_type=method,
                        compresslevel=DEFLATE_LEVEL if compress else None)
    return buffer.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` that ``np.load`` reads, without ``np.savez``'s wall-clock timestamps."""
    members = {}
    for key, array in arrays.items():
        out = io.BytesIO()
        np.lib.format.write_array(out, np.asarray(array, order="C"), allow_pickle=False)
        members[f"{key}.npy"] = out.getvalue()
    return _zip_bytes(members, compress=False)    # the bundle deflates it


def read_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def file_entries(files: dict[str, bytes]) -> dict[str, dict]:
    """The manifest's ``files``: sha256 and size of every member but the manifest."""
    return {name: {"sha256": sha256_bytes(data), "size": len(data)}
            for name, data in sorted(files.items())}


def write_bundle(path: Path, files: dict[str, bytes], manifest: dict) -> str:
    """Write ``files`` plus ``manifest.json`` to ``path`` atomically; returns the zip's sha256.

    ``manifest['files']`` is filled in here from ``files``. The zip is written beside ``path``
    under a temporary name and renamed, so no half-written bundle is left under its name.
    """
    for name in files:
        problem = member_name_problem(name)
        if problem or name == MANIFEST:
            msg = f"bundle member {name!r}: {problem or 'reserved name'}"
            raise BundleError(msg)
    manifest = {**manifest, "files": file_entries(files)}
    data = _zip_bytes({**files, MANIFEST: manifest_bytes(manifest)}, compress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_bytes(data)


# --- reading ---------------------------------------------------------------------------

_DRIVE = re.compile(r"^[A-Za-z]:")


def member_name_problem(name: str) -> str | None:
    """Why a member name is unsafe to extract, or None."""
    if not name or "\x00" in name:
        return "empty or NUL in its name"
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return "absolute path"
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        return "'..' in its path (outside the bundle)"
    if name.endswith("/"):
        return "a folder (bundles hold files only)"
    if any(p in ("", ".") for p in parts):
        return "empty or '.' path component"
    return None


def _member_problem(info: zipfile.ZipInfo, limits: BundleLimits) -> str | None:
    problem = member_name_problem(info.filename)
    if problem:
        return problem
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        return "not a regular file"
    if info.flag_bits & 0x1:
        return "encrypted"
    if info.file_size > limits.max_member_bytes:
        return f"{info.file_size:,} bytes, over the {limits.max_member_bytes:,}-byte limit"
    return None


class Bundle:
    """An opened bundle: members checked; each streamed in ``CHUNK``-sized pieces through
    hashing or extraction, and only the small ones (manifest, reference) read whole, capped."""

    def __init__(self, path: Path, zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo],
                 limits: BundleLimits) -> None:
        self.path = path
        self._zf = zf
        self._infos = infos
        self._limits = limits
        self.manifest: dict = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._infos)

    def chunks(self, name: str):
        """The member's bytes, inflated ``CHUNK`` at a time: memory stays bounded whatever
        the zip claims. A member that inflates past its declared size is rejected."""
        info = self._infos[name]
        seen = 0
        try:
            with self._zf.open(info) as f:
                while True:
                    block = f.read(CHUNK)
                    if not block:
                        break
                    seen += len(block)
                    if seen > info.file_size:
                        msg = (f"{self.path.name}: member {name} inflates to more than its "
                               "declared size")
                        raise BundleRejected(msg)
                    yield block
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            msg = f"{self.path.name}: member {name} is corrupt ({short_reason(e)})"
            raise BundleRejected(msg) from e
        if seen != info.file_size:
            msg = f"{self.path.name}: member {name} inflates to less than its declared size"
            raise BundleRejected(msg)

    def digest(self, name: str) -> tuple[str, int]:
        """sha256 and size of a member, streamed."""
        h, size = hashlib.sha256(), 0
        for block in self.chunks(name):
            h.update(block)
            size += len(block)
        return h.hexdigest(), size

    def read(self, name: str, limit: int | None = None) -> bytes:
        """A small member (the manifest, the reference data) whole; ``limit`` caps its size."""
        info = self._infos[name]
        if limit is not None and info.file_size > limit:
            msg = (f"{self.path.name}: member {name} is {info.file_size:,} bytes, over its "
                   f"{limit:,}-byte limit")
            raise BundleRejected(msg)
        return b"".join(self.chunks(name))

    def close(self) -> None:
        self._zf.close()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_bundle(path: Path, limits: BundleLimits | None = None) -> Bundle:
    """Open and check a bundle without extracting anything.

    Raises:
        BundleError: not a zip file, no manifest, unreadable or unknown-schema manifest.
        BundleRejected: an unsafe member (absolute path, ``..``, symlink, duplicate name,
            encrypted, too large or too many), named in the message.
    """
    limits = limits or BundleLimits()
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: no such bundle file"
        raise BundleError(msg)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        msg = f"{path} is not a bundle: not a zip file ({e})"
        raise BundleError(msg) from e
    try:
        infos: dict[str, zipfile.ZipInfo] = {}
        total = 0
        members = zf.infolist()
        if len(members) > limits.max_members:
            msg = f"{path.name}: {len(members)} members, over the limit of {limits.max_members}"
            raise BundleRejected(msg)
        for info in members:
            problem = _member_problem(info, limits)
            if problem is None and info.filename in infos:
                problem = "a duplicate name"
            if problem:
                msg = f"{path.name}: member {info.filename!r} is rejected: {problem}"
                raise BundleRejected(msg)
            infos[info.filename] = info
            total += info.file_size
        if total > limits.max_total_bytes:
            msg = (f"{path.name}: members total {total:,} bytes, over the "
                   f"{limits.max_total_bytes:,}-byte limit")
            raise BundleRejected(msg)
        bundle = Bundle(path, zf, infos, limits)
        if MANIFEST not in infos:
            msg = f"{path} is not an edgeopt bundle: no {MANIFEST}"
            raise BundleError(msg)
        bundle.manifest = _parse_manifest(
            path, bundle.read(MANIFEST, limit=limits.max_manifest_bytes))
        return bundle
    except BaseException:
        zf.close()
        raise


def _parse_manifest(path: Path, data: bytes) -> dict:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        msg = f"{path.name}: {MANIFEST} is not valid JSON ({e})"
        raise BundleError(msg) from e
    if not isinstance(manifest, dict):
        msg = f"{path.name}: {MANIFEST} is not a JSON object"
        raise BundleError(msg)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        msg = (f"{path.name}: {MANIFEST} schema_version {version!r} is not {SCHEMA_VERSION}; "
               "use the edgeopt version that wrote it")
        raise BundleError(msg)
    missing = [k for k in ("files", "model", "inputs", "outputs", "reference", "tolerance")
               if k not in manifest]
    if missing or not isinstance(manifest.get("files"), dict):
        msg = f"{path.name}: {MANIFEST} lacks {', '.join(missing) or 'a files table'}"
        raise BundleError(msg)
    problems = _manifest_problems(manifest)
    if problems:
        msg = f"{path.name}: {MANIFEST} is malformed: {'; '.join(problems)}"
        raise BundleError(msg)
    return manifest


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _manifest_problems(manifest: dict) -> list[str]:
    """Type problems of the keys ``verify`` reads, every one, so none fails later."""
    problems = []
    for key in ("model", "reference", "tolerance"):
        if not isinstance(manifest[key], dict):
            problems.append(f"{key} is {type(manifest[key]).__name__}, not an object")
    for key in ("inputs", "outputs"):
        value = manifest[key]
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            problems.append(f"{key} is not a list of objects")
    if problems:
        return problems
    samples = manifest["reference"].get("samples")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        problems.append(f"reference.samples {samples!r} is not a positive integer")
    outputs = manifest["tolerance"].get("outputs")
    if not isinstance(outputs, dict):
        problems.append(f"tolerance.outputs {outputs!r} is not an object")
        return problems
    for name, tol in outputs.items():
        if not isinstance(tol, dict):
            problems.append(f"tolerance.outputs.{name} {tol!r} is not an object")
            continue
        for field in ("max_abs_diff", "min_cosine"):
            if not _is_number(tol.get(field)):
                problems.append(f"tolerance.outputs.{name}.{field} {tol.get(field)!r} "
                                "is not a number")
        argmax = tol.get("argmax")
        if argmax is not None and not (isinstance(argmax, dict)
                                       and isinstance(argmax.get("axis"), int)
                                       and _is_number(argmax.get("min_margin"))):
            problems.append(f"tolerance.outputs.{name}.argmax {argmax!r} is not "
                            "{axis: int, min_margin: number}")
    return problems


def check_files(bundle: Bundle) -> dict[str, dict]:
    """Every file the manifest lists, streamed through sha256 and checked with its size.

    Returns the checked manifest entries by name; nothing is held in memory. Raises
    BundleRejected naming the first file that is missing, altered, or present without
    being listed.
    """
    listed = bundle.manifest["files"]
    unlisted = [n for n in bundle.names if n != MANIFEST and n not in listed]
    if unlisted:
        msg = f"{bundle.path.name}: {unlisted[0]} is in the bundle but not in its manifest"
        raise BundleRejected(msg)
    checked = {}
    for name, entry in sorted(listed.items()):
        if not isinstance(entry, dict) or member_name_problem(name):
            msg = f"{bundle.path.name}: manifest entry {name!r} is malformed"
            raise BundleRejected(msg)
        if name not in bundle.names:
            msg = f"{bundle.path.name}: {name} is listed in the manifest but missing"
            raise BundleRejected(msg)
        if entry.get("size") != bundle._infos[name].file_size:
            msg = (f"{bundle.path.name}: {name} does not match its manifest size "
                   f"({bundle._infos[name].file_size:,} bytes; manifest {entry.get('size')!r})")
            raise BundleRejected(msg)
        digest, size = bundle.digest(name)
        if size != entry.get("size") or digest != entry.get("sha256"):
            msg = (f"{bundle.path.name}: {name} does not match its manifest checksum (sha256 "
                   f"{digest[:12]}..., {size:,} bytes; manifest "
                   f"{str(entry.get('sha256'))[:12]}..., {entry.get('size')} bytes)")
            raise BundleRejected(msg)
        checked[name] = entry
    return checked


def read_reference(bundle: Bundle) -> dict[str, np.ndarray]:
    """``reference.npz``, capped in size and decoded without pickles."""
    data = bundle.read(REFERENCE, limit=bundle._limits.max_reference_bytes)
    if sha256_bytes(data) != (bundle.manifest["files"].get(REFERENCE) or {}).get("sha256"):
        msg = f"{bundle.path.name}: {REFERENCE} changed since its checksum was checked"
        raise BundleRejected(msg)
    try:
        return read_npz(data)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        msg = f"{bundle.path.name}: {REFERENCE} is not a readable .npz ({short_reason(e)})"
        raise BundleRejected(msg) from e


def extract_private(bundle: Bundle, names: list[str]) -> Path:
    """Stream the named (already checked) members into a new private temp folder (0700),
    hashing them again on the way: what lands on disk is what the manifest lists."""
    folder = Path(tempfile.mkdtemp(prefix="edgeopt-verify-"))
    try:
        for name in names:
            target = folder / PurePosixPath(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as f:
                for block in bundle.chunks(name):
                    h.update(block)
                    f.write(block)
            if h.hexdigest() != bundle.manifest["files"][name].get("sha256"):
                msg = f"{bundle.path.name}: {name} changed since its checksum was checked"
                raise BundleRejected(msg)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder
