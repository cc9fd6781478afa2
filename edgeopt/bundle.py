"""App bundles on disk: deterministic zip writing, safe reading, the manifest and its checksums.

A bundle is a flat zip: the model in the target's format, ``manifest.json``, reference inputs
and outputs (``reference.npz``) and whatever else the target needs. Writing is deterministic
(sorted members, fixed timestamps and permissions, one deflate level), so the same inputs give
the same bytes. Reading checks every member header before anything is extracted: no absolute
paths, no ``..``, no symlinks, no duplicates, no encrypted members, sizes within limits.

Imports only the standard library and numpy: ``edgeopt verify`` runs in the runtime-only
install.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from edgeopt.errors import EdgeoptError

__all__ = ["MANIFEST", "REFERENCE", "SCHEMA_VERSION", "Bundle", "BundleError", "BundleLimits",
           "BundleRejected", "check_files", "extract_private", "npz_bytes", "open_bundle",
           "read_npz", "write_bundle"]

MANIFEST = "manifest.json"
REFERENCE = "reference.npz"
SCHEMA_VERSION = 1
# Fixed metadata for every member: the earliest date zip can store, a regular file, rw-r--r--.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
MEMBER_ATTR = (stat.S_IFREG | 0o644) << 16
DEFLATE_LEVEL = 9
MAX_MEMBERS = 64


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
        np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)
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
    """An opened bundle: members checked, read into memory on demand with size caps."""

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

    def read(self, name: str) -> bytes:
        info = self._infos[name]
        try:
            with self._zf.open(info) as f:
                # The header's size is checked already; a member inflating past it lies.
                data = f.read(info.file_size + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            msg = f"{self.path.name}: member {name} is corrupt ({e})"
            raise BundleRejected(msg) from e
        if len(data) != info.file_size:
            msg = f"{self.path.name}: member {name} inflates to more than its declared size"
            raise BundleRejected(msg)
        return data

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
        bundle.manifest = _parse_manifest(path, bundle.read(MANIFEST))
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
    return manifest


def check_files(bundle: Bundle) -> dict[str, bytes]:
    """Every file the manifest lists, read and checked against its sha256 and size.

    Raises BundleRejected naming the first file that is missing, altered, or present
    without being listed.
    """
    listed = bundle.manifest["files"]
    unlisted = [n for n in bundle.names if n != MANIFEST and n not in listed]
    if unlisted:
        msg = f"{bundle.path.name}: {unlisted[0]} is in the bundle but not in its manifest"
        raise BundleRejected(msg)
    contents = {}
    for name, entry in sorted(listed.items()):
        if not isinstance(entry, dict) or member_name_problem(name):
            msg = f"{bundle.path.name}: manifest entry {name!r} is malformed"
            raise BundleRejected(msg)
        if name not in bundle.names:
            msg = f"{bundle.path.name}: {name} is listed in the manifest but missing"
            raise BundleRejected(msg)
        data = bundle.read(name)
        if len(data) != entry.get("size") or sha256_bytes(data) != entry.get("sha256"):
            msg = (f"{bundle.path.name}: {name} does not match its manifest checksum (sha256 "
                   f"{sha256_bytes(data)[:12]}..., {len(data):,} bytes; manifest "
                   f"{str(entry.get('sha256'))[:12]}..., {entry.get('size')} bytes)")
            raise BundleRejected(msg)
        contents[name] = data
    return contents


def extract_private(contents: dict[str, bytes], names: list[str]) -> Path:
    """Write the named (already checked) members into a new private temp folder (0700)."""
    folder = Path(tempfile.mkdtemp(prefix="edgeopt-verify-"))
    for name in names:
        target = folder / PurePosixPath(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(contents[name])
    return folder
