"""ARM correctness on a non-ARM Linux host: qemu-user and a cached aarch64 sysroot.

The recipe (DESIGN.md, "Runtimes and devices"): qemu-aarch64 10 from Debian trixie's
``qemu-user`` package (static binaries; bookworm's qemu 7.2 crashes importing onnxruntime
and miscomputes int8), a Debian bookworm arm64 sysroot unpacked by ``mmdebstrap
--variant=extract`` from the mirror this machine's apt uses, and aarch64 wheels of
onnxruntime, numpy and pyyaml installed by the host's pip, plus the current edgeopt wheel
(runtime-only: torch, onnx, nncf and rich do not import inside). The model then runs as
``qemu-aarch64 -L SYSROOT SYSROOT/usr/bin/python3.11 -m edgeopt run ...`` with
``QEMU_CPU`` set to the device's core, and its outputs are compared with this machine's
(:mod:`edgeopt.runtimes.compare`).

What it proves is correctness on the device's instruction set (NEON, dotprod kernels),
never speed: qemu runs orders of magnitude slower than the device, so no latency is ever
reported.

Prebuild the cache with ``python -m edgeopt.runtimes.emulation build``. The build steps
(download, mmdebstrap, wheels) are in :mod:`edgeopt.runtimes._emulation_build`.
"""

from __future__ import annotations

import contextlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# debian_mirror, find_package, tree_hash: re-exported, callers and tests know them from here.
from edgeopt.runtimes._emulation_build import (  # noqa: F401
    GUEST_PYTHON,
    GUEST_SITE,
    META,
    EmulationError,
    Progress,
    build_into,
    cache_root,
    debian_mirror,
    find_package,
    qemu_binary,
    qemu_version,
    refresh_edgeopt,
    sysroot_dir,
    tree_hash,
)
from edgeopt.runtimes.base import Availability
from edgeopt.runtimes.bench import EMULATED_ENV
from edgeopt.runtimes.compare import output_diff

__all__ = ["EmulationError", "build_sysroot", "compare_outputs", "emulate", "run_in_chunks",
           "emulation_available", "sysroot_dir"]

NOTE = "correctness under emulation; timings under qemu are not the device's speed"

# Tolerances, relative to the output's scale (max |host output|, at least 1).
#  fp32: ARM's and x86's float kernels differ only in summation order / FMA contraction,
#        i.e. a few ulps of the accumulators; 1e-4 of the scale leaves room for that alone.
#  int8: ONNX Runtime's aarch64 kernels (u8s8/s8s8, dotprod on cortex-a76/neoverse-n1,
#        plain NEON on cortex-a72) may round an intermediate one step differently from
#        x86's (AVX2/VNNI); a step is scale/127 of the tensor it lands in. The tolerance
#        allows 2 output quantization steps (2/127 of the scale) so a single requantization
#        rounding the other way passes, and demands equal argmax on every row: a rounding
#        difference must never change a prediction.
TOLERANCES = {
    "fp32": {"max_abs_diff_rel": 1e-4, "top1_match_min": None},
    "int8": {"max_abs_diff_rel": 2 / 127, "top1_match_min": 1.0},
}
# Operators whose presence makes a graph INT8 (ONNX QDQ/QOperator, OpenVINO IR).
_INT8_MARKERS = (b"QuantizeLinear", b"QLinearConv", b"QLinearMatMul", b"QGemm",
                 b"MatMulInteger", b"ConvInteger", b"FakeQuantize")


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
    return (sysroot / META / "build.json").is_file() and qemu_binary(sysroot).is_file()


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
            build_into(sysroot, say)
        _write_launcher(sysroot)
        refresh_edgeopt(sysroot, say)
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
    return [str(qemu_binary(sysroot)), "-L", str(sysroot), "-0", str(_launcher(sysroot)),
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

    say(f"running {model.name} on an emulated {qemu_cpu} (qemu-aarch64, {adapter})")
    guest = _run_emulated(sysroot, model, feeds, qemu_cpu, adapter)
    result = {"label": "emulated", "qemu_cpu": qemu_cpu,
              "qemu_version": qemu_version(qemu_binary(sysroot)), "adapter": adapter,
              "guest_runtime_version": guest_runtime_version(sysroot, adapter),
              "precision": precision}
    result.update(compare_outputs(host, guest, precision))
    result["note"] = NOTE
    return result


def _run_emulated(sysroot: Path, model: Path, feeds: dict[str, np.ndarray], qemu_cpu: str,
                  adapter: str) -> dict[str, np.ndarray]:
    """``edgeopt run`` of ``model`` on ``feeds`` inside the sysroot: output name -> array."""
    with tempfile.TemporaryDirectory(prefix="edgeopt-emulate-") as tmp:
        inputs, out = Path(tmp) / "inputs.npz", Path(tmp) / "outputs.npz"
        np.savez(inputs, **feeds)
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
            return {name: saved[name] for name in saved.files}


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
        diff = output_diff(expected, got)
        entry.update(max_abs_diff=diff.max_abs_diff, cosine=diff.cosine,
                     allowed_abs_diff=tolerance["max_abs_diff_rel"] * max(diff.peak_abs, 1.0))
        if expected.ndim == 2 and np.issubdtype(expected.dtype, np.floating):
            entry["top1_match"] = float(np.mean(expected.argmax(1) == got.argmax(1)))
        # a non-finite value on either side makes the difference infinite: never within
        within = diff.max_abs_diff <= entry["allowed_abs_diff"]
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
                     f"({size / 1e6:.0f} MB, qemu {qemu_version(qemu_binary(sysroot))})\n")
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
