"""ARM correctness on a non-ARM Linux host: qemu-user and a cached aarch64 sysroot.

The recipe (DESIGN.md, "Runtimes and devices"): qemu-aarch64 10 from Debian trixie's
``qemu-user`` package (static binaries; bookworm's qemu 7.2 crashes importing onnxruntime
and miscomputes int8), a Debian bookworm arm64 sysroot unpacked by ``mmdebstrap
--variant=extract`` from the mirror this machine's apt uses, and aarch64 wheels of
onnxruntime, numpy and pyyaml installed by the host's pip, plus the current edgeopt wheel
(runtime-only: torch, onnx, nncf and rich do not import inside). The model then runs as
``qemu-aarch64 -L SYSROOT SYSROOT/usr/bin/python3.11 -m edgeopt run ...`` with
``QEMU_CPU`` set to the device's core, and its outputs are compared with this machine's.

What it proves is correctness on the device's instruction set (NEON, dotprod kernels),
never speed: qemu runs 100-1000x slower than the device, so no latency is ever reported.

Prebuild the cache with ``python -m edgeopt.runtimes.emulation build``.
"""

from __future__ import annotations

import contextlib
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

import numpy as np

from edgeopt.runtimes.base import Availability, first_line
from edgeopt.runtimes.bench import EMULATED_ENV
from edgeopt.runtimes.errors import AdapterUnavailable

__all__ = ["EmulationError", "build_sysroot", "compare_outputs", "emulate", "run_in_chunks",
           "emulation_available", "sysroot_dir"]

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
NOTE = "correctness under emulation; timings under qemu are not the device's speed"

# Tolerances, relative to the output's scale (max |host output|, at least 1).
#  fp32: ARM's and x86's float kernels differ only in summation order / FMA contraction,
#        i.e. a few ulps of the accumulators; 1e-4 of the scale leaves room for that alone.
#        Measured on digits-cnn FP32 (300 test digits, onnxruntime 1.32, qemu 10.0.13):
#        max abs diff 3.8e-6 on logits of scale ~11.5 (allowed 1.2e-3), argmax all equal.
#  int8: ONNX Runtime's aarch64 kernels (u8s8/s8s8, dotprod on cortex-a76/neoverse-n1,
#        plain NEON on cortex-a72) may round an intermediate one step differently from
#        x86's (AVX2/VNNI); a step is scale/127 of the tensor it lands in. Measured on
#        digits-cnn INT8 (same 300 digits, all three cores): max abs diff 0.0, bit-exact.
#        The tolerance still allows 2 output quantization steps (2/127 of the scale) so a
#        single requantization rounding the other way in a deeper model passes, and demands
#        equal argmax on every row: a rounding difference must never change a prediction.
TOLERANCES = {
    "fp32": {"max_abs_diff_rel": 1e-4, "top1_match_min": None},
    "int8": {"max_abs_diff_rel": 2 / 127, "top1_match_min": 1.0},
}
# Operators whose presence makes a graph INT8 (ONNX QDQ/QOperator, OpenVINO IR).
_INT8_MARKERS = (b"QuantizeLinear", b"QLinearConv", b"QLinearMatMul", b"QGemm",
                 b"MatMulInteger", b"ConvInteger", b"FakeQuantize")


class EmulationError(AdapterUnavailable):
    """ARM emulation cannot be set up or run here; the message says why, in one line."""


# --- where things are ----------------------------------------------------------------------

def cache_root() -> Path:
    return Path(os.environ.get("EDGEOPT_CACHE_DIR") or Path.home() / ".cache" / "edgeopt")


def sysroot_dir() -> Path:
    """Where the aarch64 sysroot is (or will be) cached."""
    return cache_root() / "arm64-sysroot"


def _qemu(sysroot: Path) -> Path:
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


# --- availability --------------------------------------------------------------------------

def emulation_available() -> Availability:
    """Whether this host can build (or has cached) and run the aarch64 sysroot."""
    if platform.system() != "Linux":
        return Availability(False, f"qemu-user runs on Linux hosts only (this is {platform.system()})")
    if platform.machine().lower() in ("aarch64", "arm64"):
        return Availability(False, "this host is aarch64: run the ARM adapters natively, "
                                   "no emulation needed")
    if _is_built(sysroot_dir()):
        return Availability(True)
    if shutil.which("dpkg-deb") is None:
        return Availability(False, "dpkg-deb is missing (apt-get install dpkg), needed to "
                                   "unpack Debian's qemu-user package")
    if shutil.which("mmdebstrap") is None:
        return Availability(False, "mmdebstrap is missing: apt-get install mmdebstrap "
                                   "(builds the aarch64 sysroot)")
    return Availability(True)


def _is_built(sysroot: Path) -> bool:
    return (sysroot / META / "build.json").is_file() and _qemu(sysroot).is_file()


# --- building --------------------------------------------------------------------------------

def build_sysroot(progress: Progress | None = None) -> Path:
    """Build (once) the aarch64 sysroot with qemu-aarch64 and the runtime wheels; refresh its
    edgeopt wheel when the installed edgeopt changed. Returns the sysroot's path.

    Args:
        progress: called with a one-line description as each long step starts.

    Raises:
        EmulationError: a tool is missing, a download or an install failed.
    """
    say = progress or (lambda _msg: None)
    availability = emulation_available()
    if not availability.ok:
        raise EmulationError(availability.reason)
    sysroot = sysroot_dir()
    sysroot.parent.mkdir(parents=True, exist_ok=True)
    with _locked(exclusive=True):
        if not _is_built(sysroot):
            _build_into(sysroot, say)
        _write_launcher(sysroot)
        _refresh_edgeopt(sysroot, say)
    return sysroot


@contextlib.contextmanager
def _locked(*, exclusive: bool):
    """Exclusive while the cache is built or its edgeopt replaced, shared while a guest
    runs: two processes (tests, bench --emulate) never see a half-swapped sysroot."""
    import fcntl

    with open(cache_root() / "arm64-sysroot.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_into(sysroot: Path, say: Progress) -> None:
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
         "qemu_version": _qemu_version(_qemu(root)), "built": time.strftime("%Y-%m-%d %H:%M:%S")},
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
        shutil.copy2(binary, _qemu(root))
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


def _tree_hash(root: Path) -> str:
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


def _refresh_edgeopt(sysroot: Path, say: Progress) -> None:
    """Install the current edgeopt into the sysroot unless the one there is the same code."""
    source, is_project = _edgeopt_source()
    version = getattr(sys.modules.get("edgeopt"), "__version__", "?")
    stamp = f"{version}:{_tree_hash(source)}"
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


def _qemu_version(qemu: Path) -> str:
    out = _run([str(qemu), "--version"], "qemu-aarch64 --version").stdout
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else out.strip().splitlines()[0]


# --- running -------------------------------------------------------------------------------

def guest_env(qemu_cpu: str) -> dict[str, str]:
    """The guest's whole environment: nothing of the host's Python or library paths.
    PYTHONSAFEPATH keeps the working folder off sys.path: run from a project checkout,
    ``-m edgeopt`` would import the host's source tree instead of the sysroot's wheel."""
    return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
            "PYTHONPATH": GUEST_SITE, "PYTHONNOUSERSITE": "1", "PYTHONSAFEPATH": "1",
            "QEMU_CPU": qemu_cpu,
            EMULATED_ENV: f"qemu-aarch64:{qemu_cpu}"}


def guest_command(sysroot: Path, *args: str) -> list[str]:
    """``qemu-aarch64 -L SYSROOT -0 LAUNCHER SYSROOT/usr/bin/python3.11 ARGS``; -L maps
    absolute paths into the sysroot first, so PYTHONPATH=/opt/site finds the aarch64 wheels.

    With no binfmt handler, the host cannot exec an aarch64 binary, so a guest that starts
    ``sys.executable`` (the benchmark's fresh process per repeat) would fail: argv[0] (-0)
    makes ``sys.executable`` a host shell launcher beside python3.11 that runs it under
    qemu again, with the same environment (QEMU_CPU, PYTHONPATH)."""
    return [str(_qemu(sysroot)), "-L", str(sysroot), "-0", str(_launcher(sysroot)),
            str(sysroot / GUEST_PYTHON.lstrip("/")), *args]


_LAUNCHER = """#!/bin/sh
# python3.11 of this aarch64 sysroot under qemu-aarch64 (written by edgeopt.runtimes.emulation)
root=$(cd "$(dirname "$0")/../.." && pwd)
exec "$root/opt/edgeopt-emulation/qemu-aarch64" -L "$root" -0 "$root/usr/bin/python3.11-qemu" \
    "$root/usr/bin/python3.11" "$@"
"""


def _launcher(sysroot: Path) -> Path:
    # In usr/bin, so Python still finds its standard library from argv[0]'s folder.
    return sysroot / "usr" / "bin" / "python3.11-qemu"


def _write_launcher(sysroot: Path) -> None:
    path = _launcher(sysroot)
    if not path.is_file() or path.read_text() != _LAUNCHER:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(_LAUNCHER)
        tmp.chmod(0o755)
        tmp.replace(path)


def run_guest(sysroot: Path, qemu_cpu: str, *args: str, timeout: float = 1800
              ) -> subprocess.CompletedProcess:
    """Run ``python3.11 ARGS`` in the sysroot under qemu (exit code not checked), holding
    the cache's shared lock so no other process swaps the sysroot's edgeopt meanwhile."""
    with _locked(exclusive=False):
        return subprocess.run(guest_command(sysroot, *args), capture_output=True, text=True,
                              timeout=timeout, env=guest_env(qemu_cpu))


def emulate(model: Path, feeds: dict[str, np.ndarray], qemu_cpu: str, adapter: str = "ort-cpu",
            progress: Progress | None = None, precision: str | None = None) -> dict:
    """Run ``model`` on ``feeds`` here and on an emulated ARM core; compare the outputs.

    Args:
        model: an .onnx model (or OpenVINO .xml for ``ov-*`` adapters).
        feeds: input name -> array, as the model takes them.
        qemu_cpu: the core qemu emulates (the device unit's ``qemu_cpu``: cortex-a76...).
        adapter: the runtime adapter inside the sysroot (compared with the same runtime's
            CPU adapter here: ``ort-cpu`` or ``ov-cpu``).
        progress: called with a one-line description as each long step starts.
        precision: "fp32" or "int8" for the tolerance; guessed from the graph's operators
            when None.

    Returns:
        A JSON-able dict labelled "emulated" with each output's max abs diff, cosine and
        top-1 agreement, the tolerance and whether every output is within it. Never a
        latency: qemu's speed is not the device's.

    Raises:
        EmulationError: the sysroot cannot be built, or the model failed under qemu (the
            message ends with the guest's last stderr line).
    """
    say = progress or (lambda _msg: None)
    model = Path(model).resolve()
    precision = precision or model_precision(model)
    if precision not in TOLERANCES:
        msg = f"precision must be one of {', '.join(TOLERANCES)}, not '{precision}'"
        raise EmulationError(msg)
    sysroot = build_sysroot(progress)
    from edgeopt.runtimes import get_adapter

    host_adapter = "ov-cpu" if adapter.startswith("ov") else "ort-cpu"
    loaded = get_adapter(host_adapter).load(model)
    host = dict(zip([o.name for o in loaded.outputs], run_in_chunks(loaded, feeds), strict=True))

    with tempfile.TemporaryDirectory(prefix="edgeopt-emulate-") as tmp:
        inputs, out = Path(tmp) / "inputs.npz", Path(tmp) / "outputs.npz"
        np.savez(inputs, **feeds)
        say(f"running {model.name} on an emulated {qemu_cpu} (qemu-aarch64, {adapter})")
        try:
            done = run_guest(sysroot, qemu_cpu, "-m", "edgeopt", "run", str(model),
                             "--inputs", str(inputs), "--out", str(out), "--adapter", adapter)
        except subprocess.TimeoutExpired as e:
            msg = f"{model.name} under qemu-aarch64 ({qemu_cpu}) timed out"
            raise EmulationError(msg) from e
        if done.returncode != 0 or not out.is_file():
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            last = lines[-1].strip() if lines else f"exit code {done.returncode}"
            msg = f"{model.name} failed under qemu-aarch64 ({qemu_cpu}): {last}"
            raise EmulationError(msg)
        with np.load(out) as saved:
            guest = {name: saved[name] for name in saved.files}

    result = {"label": "emulated", "qemu_cpu": qemu_cpu,
              "qemu_version": _qemu_version(_qemu(sysroot)), "adapter": adapter,
              "guest_runtime_version": guest_runtime_version(sysroot, adapter),
              "precision": precision}
    result.update(compare_outputs(host, guest, precision))
    result["note"] = NOTE
    return result


def run_in_chunks(loaded, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``feeds`` once, or, when they stack several samples along a dimension the model
    fixes (a batch-1 model given N samples), sample batch by sample batch, outputs stacked."""
    chunks = set()
    for spec in loaded.inputs:
        array = feeds.get(spec.name)
        if array is None or not spec.shape or not isinstance(spec.shape[0], int):
            continue
        fixed = spec.shape[0]
        if array.ndim == len(spec.shape) and fixed > 0 and array.shape[0] != fixed \
                and array.shape[0] % fixed == 0:
            chunks.add(array.shape[0] // fixed)
        else:
            chunks.add(1)
    if len(chunks) != 1 or chunks == {1}:
        return loaded.run(feeds)
    n = chunks.pop()
    runs = [loaded.run({k: np.array_split(v, n)[i] for k, v in feeds.items()}) for i in range(n)]
    return [np.concatenate(parts) for parts in zip(*runs, strict=True)]


def guest_runtime_version(sysroot: Path, adapter: str) -> str | None:
    name = "openvino" if adapter.startswith("ov") else "onnxruntime"
    site = sysroot / GUEST_SITE.lstrip("/")
    found = sorted(site.glob(f"{name}-*.dist-info"))
    return found[-1].name[len(name) + 1:-len(".dist-info")] if found else None


def model_precision(model: Path) -> str:
    """"int8" when the graph has quantization operators, else "fp32" (a byte scan: the
    operator names are plain strings in ONNX and OpenVINO IR files, and no onnx needed)."""
    data = Path(model).read_bytes()
    return "int8" if any(marker in data for marker in _INT8_MARKERS) else "fp32"


# --- comparing -----------------------------------------------------------------------------

def compare_outputs(host: dict[str, np.ndarray], guest: dict[str, np.ndarray],
                    precision: str) -> dict:
    """Per-output differences and the verdict against ``TOLERANCES[precision]``."""
    tolerance = TOLERANCES[precision]
    outputs, ok = [], set(host) == set(guest)
    for name, expected in host.items():
        if name not in guest:
            outputs.append({"name": name, "error": "missing from the emulated run"})
            continue
        got = guest[name]
        entry: dict = {"name": name}
        if got.shape != expected.shape:
            entry["error"] = f"shape {list(got.shape)} != {list(expected.shape)}"
            ok = False
            outputs.append(entry)
            continue
        a, b = expected.astype(np.float64), got.astype(np.float64)
        scale = max(float(np.abs(a).max(initial=0.0)), 1.0)
        diff = float(np.abs(a - b).max(initial=0.0))
        norms = float(np.linalg.norm(a) * np.linalg.norm(b))
        entry.update(max_abs_diff=diff,
                     cosine=float((a.ravel() @ b.ravel()) / norms) if norms else
                     float(np.array_equal(a, b)),
                     allowed_abs_diff=tolerance["max_abs_diff_rel"] * scale)
        if a.ndim == 2 and np.issubdtype(expected.dtype, np.floating):
            entry["top1_match"] = float(np.mean(a.argmax(1) == b.argmax(1)))
        within = diff <= entry["allowed_abs_diff"] and bool(np.isfinite(b).all() ==
                                                           np.isfinite(a).all())
        need = tolerance["top1_match_min"]
        if need is not None and "top1_match" in entry:
            within = within and entry["top1_match"] >= need
        entry["within_tolerance"] = within
        ok = ok and within
        outputs.append(entry)
    return {"outputs": outputs, "within_tolerance": ok,
            "tolerance": {"precision": precision, **tolerance,
                          "scale": "max |host output|, at least 1"}}


# --- command line --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``python -m edgeopt.runtimes.emulation build``: prebuild the sysroot, print where."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m edgeopt.runtimes.emulation",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "where"])
    args = parser.parse_args(argv)
    if args.command == "where":
        print(sysroot_dir())
        return 0
    start = time.perf_counter()
    try:
        with _status() as say:
            sysroot = build_sysroot(say)
    except EmulationError as e:
        sys.stderr.write(f"edgeopt: error: {e}\n")
        return 2
    size = sum(f.stat().st_size for f in sysroot.rglob("*") if f.is_file() and not f.is_symlink())
    sys.stderr.write(f"ready in {time.perf_counter() - start:.0f} s "
                     f"({size / 1e6:.0f} MB, qemu {_qemu_version(_qemu(sysroot))})\n")
    print(sysroot)
    return 0


@contextlib.contextmanager
def _status():
    try:
        from rich.console import Console
    except ImportError:        # inside a runtime-only install: plain lines
        yield lambda msg: sys.stderr.write(msg + "\n")
        return
    console = Console(stderr=True)
    with console.status("preparing the aarch64 sysroot") as status:
        def say(msg: str) -> None:
            console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}")
            status.update(msg)

        yield say


if __name__ == "__main__":
    sys.exit(main())
