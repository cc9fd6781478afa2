"""Building the aarch64 sysroot that :mod:`edgeopt.runtimes.emulation` runs models in.

Debian's qemu-user package (downloaded, SHA256-checked against the index), an arm64
sysroot from ``mmdebstrap``, the runtime wheels and the current edgeopt wheel; where they are
cached. The recipe, and the locking around it, are described in that module.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from edgeopt.runtimes.errors import AdapterUnavailable, first_line

Progress = Callable[[str], None]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
QEMU_SUITE = "trixie"                 # qemu 10; bookworm's 7.2 crashes importing onnxruntime
GUEST_SUITE = "bookworm"              # python3.11, the host's Python minor version
GUEST_PYTHON = "/usr/bin/python3.11"
GUEST_SITE = "/opt/site"
META = "opt/edgeopt-emulation"        # inside the sysroot: qemu-aarch64 and build.json
RUNTIME_PACKAGES = ("onnxruntime", "numpy", "pyyaml")
MANYLINUX = tuple(f"manylinux_2_{n}_aarch64" for n in range(36, 16, -1))  # bookworm: glibc 2.36
# Not copied into the edgeopt wheel's build tree (and not hashed for its freshness).
_SKIP_DIRS = (".*", "__pycache__", "*.egg-info", "build", "dist", "tests", "benchmarks",
              "edgeopt-out", "out*")
_SKIP_FILES = (".*", "*.pyc", "*.onnx", "*.npz", "*.bin", "*.xml")


class EmulationError(AdapterUnavailable):
    """ARM emulation cannot be set up or run here; the message says why, in one line."""


# --- where things are ----------------------------------------------------------------------

def cache_root() -> Path:
    return Path(os.environ.get("EDGEOPT_CACHE_DIR") or Path.home() / ".cache" / "edgeopt")


def sysroot_dir() -> Path:
    """Where the aarch64 sysroot is (or will be) cached."""
    return cache_root() / "arm64-sysroot"


def qemu_binary(sysroot: Path) -> Path:
    """Where the sysroot keeps its static qemu-aarch64."""
    return sysroot / META / "qemu-aarch64"


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive URI this machine's apt uses (deb822 ``.sources`` or one-line
    ``sources.list``), not its security or backports archive; deb.debian.org otherwise."""
    env = os.environ.get("EDGEOPT_DEBIAN_MIRROR")
    if env:
        return env.rstrip("/")
    files = [apt_dir / "sources.list.d" / "debian.sources", apt_dir / "sources.list",
             *sorted((apt_dir / "sources.list.d").glob("*.sources")),
             *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        entries = _deb822_entries(text) if path.suffix == ".sources" else _one_line_entries(text)
        for uri, suites in entries:
            if "security" in uri or not any(s.split("-")[0] in ("bookworm", "trixie", "stable",
                                                                 "testing", "sid", "unstable")
                                             for s in suites):
                continue
            if all(re.search(r"-(security|updates|backports)$", s) for s in suites):
                continue
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def _deb822_entries(text: str) -> list[tuple[str, list[str]]]:
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = parse_stanza(stanza)
        if "deb" not in fields.get("Types", "deb").split() or fields.get("Enabled") == "no":
            continue
        entries += [(uri, fields.get("Suites", "").split()) for uri in fields.get("URIs", "").split()]
    return entries


def _one_line_entries(text: str) -> list[tuple[str, list[str]]]:
    entries = []
    for line in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()  # type: ignore[assignment]
        if len(line) >= 3 and line[0] == "deb":
            entries.append((line[1], [line[2]]))
    return entries


def parse_stanza(stanza: str) -> dict[str, str]:
    """One deb822 paragraph -> {field: value}; comments dropped, continuation lines joined."""
    fields: dict[str, str] = {}
    key = None
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            fields[key] = value.strip()
    return fields


def find_package(index_text: str, package: str) -> dict[str, str]:
    """The stanza of ``package`` in a Debian ``Packages`` index (the last, if several)."""
    found = [f for f in map(parse_stanza, re.split(r"\n\s*\n", index_text))
             if f.get("Package") == package]
    if not found:
        msg = f"package '{package}' is not in the Debian index"
        raise EmulationError(msg)
    missing = [k for k in ("Filename", "SHA256") if k not in found[-1]]
    if missing:
        msg = f"the Debian index entry of '{package}' has no {', '.join(missing)}"
        raise EmulationError(msg)
    return found[-1]


# --- building: the steps build_sysroot runs under the cache's exclusive lock ---------------

def build_into(sysroot: Path, say: Progress) -> None:
    """Build a fresh sysroot at ``sysroot`` (the caller holds the cache's exclusive lock)."""
    # Built in a sibling temp folder and renamed: an interrupted build leaves no cache. Under
    # the exclusive lock, any other staging folder or incomplete sysroot is a killed build's.
    for stale in [*sysroot.parent.glob(".arm64-sysroot-*"), sysroot]:
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".arm64-sysroot-", dir=sysroot.parent))
    try:
        _build_base(staging / "root", say)
        (staging / "root").rename(sysroot)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_base(root: Path, say: Progress) -> None:
    mirror = debian_mirror()
    meta = root / META
    say(f"unpacking Debian {GUEST_SUITE} arm64 (python3.11) from {mirror}")
    _run(["mmdebstrap", "--variant=extract", "--include=python3.11,libstdc++6",
          "--architectures=arm64", "--quiet", GUEST_SUITE, str(root), mirror],
         "mmdebstrap", timeout=1800)
    meta.mkdir(parents=True, exist_ok=True)
    qemu_deb = _fetch_qemu_user(mirror, root, say)
    say(f"installing aarch64 wheels of {', '.join(RUNTIME_PACKAGES)}")
    _pip_install(root / GUEST_SITE.lstrip("/"), _runtime_requirements())
    (meta / "build.json").write_text(json.dumps(
        {"mirror": mirror, "guest_suite": GUEST_SUITE, "qemu_deb": qemu_deb,
         "qemu_version": qemu_version(qemu_binary(root)), "built": time.strftime("%Y-%m-%d %H:%M:%S")},
        indent=2))


def _fetch_qemu_user(mirror: str, root: Path, say: Progress) -> str:
    """Download trixie's qemu-user .deb (SHA256 from the index) and keep only qemu-aarch64."""
    arch = _host_debian_arch()
    say(f"fetching Debian {QEMU_SUITE}'s package index ({arch})")
    index_url = f"{mirror}/dists/{QEMU_SUITE}/main/binary-{arch}/Packages.xz"
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "Packages.xz"
        _download(index_url, index)
        try:
            text = lzma.decompress(index.read_bytes()).decode("utf-8", "replace")
        except lzma.LZMAError as e:
            msg = f"{index_url} is not a valid .xz file: {first_line(e)}"
            raise EmulationError(msg) from e
        entry = find_package(text, "qemu-user")
        deb = Path(tmp) / "qemu-user.deb"
        say(f"downloading qemu-user {entry.get('Version', '')} "
            f"({int(entry.get('Size', 0)) / 1e6:.0f} MB)")
        _download(f"{mirror}/{entry['Filename']}", deb, sha256=entry["SHA256"])
        _run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")], "dpkg-deb")
        binary = Path(tmp) / "x" / "usr" / "bin" / "qemu-aarch64"
        if not binary.is_file():
            msg = f"{entry['Filename']} has no usr/bin/qemu-aarch64"
            raise EmulationError(msg)
        shutil.copy2(binary, qemu_binary(root))
    return entry["Filename"]


def _host_debian_arch() -> str:
    if shutil.which("dpkg"):
        out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "i686": "i386", "i386": "i386",
            "ppc64le": "ppc64el", "armv7l": "armhf"}.get(machine, machine)


def _runtime_requirements() -> list[str]:
    # The same onnxruntime as the host's, so a difference is the CPU's, not the release's.
    try:
        from importlib.metadata import version

        return [f"onnxruntime=={version('onnxruntime')}", "numpy", "pyyaml"]
    except Exception:
        return list(RUNTIME_PACKAGES)


def _pip_install(target: Path, requirements: list[str], *, binary_only: bool = True) -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--target", str(target), "--upgrade"]
    if binary_only:
        command += [f"--platform={tag}" for tag in MANYLINUX]
        command += ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
    else:
        command += ["--no-deps"]
    _run(command + requirements, "pip install", timeout=1800)


def _edgeopt_source() -> tuple[Path, bool]:
    """The edgeopt project's source dir (with pyproject.toml) and True, or the installed
    package's folder and False when edgeopt was installed from a wheel."""
    package = Path(__file__).resolve().parent.parent / "edgeopt"
    import importlib.util

    spec = importlib.util.find_spec("edgeopt")
    if spec and spec.submodule_search_locations:
        package = Path(next(iter(spec.submodule_search_locations))).resolve()
    if (package.parent / "pyproject.toml").is_file():
        return package.parent, True
    return package, False


def tree_hash(root: Path) -> str:
    """SHA-256 of the source files under ``root`` (names and contents; build output skipped)."""
    digest = hashlib.sha256()
    for path in sorted(_source_files(root)):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _source_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _skipped(d, _SKIP_DIRS)]
        files += [Path(dirpath) / f for f in filenames if not _skipped(f, _SKIP_FILES)]
    return files


def _skipped(name: str, patterns: tuple[str, ...]) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(name, p) for p in patterns)


def _copy_ignore(folder: str, names: list[str]) -> set[str]:
    return {n for n in names
            if _skipped(n, _SKIP_DIRS if os.path.isdir(os.path.join(folder, n)) else _SKIP_FILES)}


def refresh_edgeopt(sysroot: Path, say: Progress) -> None:
    """Install the current edgeopt into the sysroot unless the one there is the same code."""
    source, is_project = _edgeopt_source()
    version = getattr(sys.modules.get("edgeopt"), "__version__", "?")
    stamp = f"{version}:{tree_hash(source)}"
    stamp_file = sysroot / META / "edgeopt.stamp"
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        return
    site = sysroot / GUEST_SITE.lstrip("/")
    say(f"installing edgeopt {version} from {source} into the sysroot")
    with tempfile.TemporaryDirectory(dir=sysroot / META) as tmp:
        fresh = Path(tmp) / "site"
        if is_project:
            # Built from a copy, so the build leaves nothing in the project's tree.
            copy = Path(tmp) / "src"
            shutil.copytree(source, copy, ignore=_copy_ignore)
            wheels = Path(tmp) / "wheels"
            _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--disable-pip-version-check", "--wheel-dir", str(wheels), str(copy)],
                 "pip wheel edgeopt", timeout=900)
            _pip_install(fresh, [str(w) for w in wheels.glob("edgeopt-*.whl")], binary_only=False)
        else:
            shutil.copytree(source, fresh / "edgeopt",
                            ignore=shutil.ignore_patterns("__pycache__"))
        stamp_file.unlink(missing_ok=True)        # stale until the swap below completes
        for old in [*site.glob("edgeopt"), *site.glob("edgeopt-*.dist-info")]:
            shutil.rmtree(old)
        for new in fresh.iterdir():
            if new.name == "edgeopt" or new.name.startswith("edgeopt-"):
                new.rename(site / new.name)
    stamp_file.write_text(stamp)


def _download(url: str, dest: Path, sha256: str | None = None) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as e:
        msg = f"download of {url} failed: {first_line(e)}"
        raise EmulationError(msg) from e
    if sha256:
        got = hashlib.sha256(dest.read_bytes()).hexdigest()
        if got != sha256:
            msg = f"{url}: SHA256 {got[:16]}... does not match the index's {sha256[:16]}..."
            raise EmulationError(msg)


def _run(command: list[str], what: str, *, timeout: float = 600,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError as e:
        msg = f"{what}: {command[0]} not found"
        raise EmulationError(msg) from e
    except subprocess.TimeoutExpired as e:
        msg = f"{what} timed out after {timeout:.0f} s"
        raise EmulationError(msg) from e
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit code {done.returncode}"
        msg = f"{what} failed (exit {done.returncode}): {last}"
        raise EmulationError(msg)
    return done


def qemu_version(qemu: Path) -> str:
    """The version ``qemu --version`` prints (e.g. 10.0.13), or its first line."""
    out = _run([str(qemu), "--version"], "qemu-aarch64 --version").stdout
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else out.strip().splitlines()[0]
