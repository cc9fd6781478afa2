"""Peak compute and memory bandwidth of a compute unit: the roofline's ceilings.

From the device profile for a unit described in devices.yaml; for the host's CPU, derived
here (cores x clock x FLOP/cycle of its ISA, a numpy copy for the bandwidth, the last-level
cache from /sys). Every figure carries its source.
"""

from __future__ import annotations

import platform
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgeopt.runtimes.devices import ComputeUnit, DeviceProfile, detect_host
from edgeopt.runtimes.errors import DeviceProfileError

# Cache size assumed where none is known: models whose weights fit it count as cached.
DEFAULT_CACHE_MB = 2.0
# /proc/cpuinfo flags that mark an aarch64 CPU.
ARM_ISA_FLAGS = {"asimd", "asimddp", "i8mm", "sve", "bf16"}


class MissingPeakFigures(DeviceProfileError):
    """A unit whose profile lacks the figures an estimate needs."""


def host_clock_ghz() -> tuple[float | None, str]:
    """This machine's maximum CPU clock and where it was read (None, "unknown" if nowhere)."""
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        return int(khz) / 1e6, "/sys cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    try:
        mhz = [float(line.split(":", 1)[1]) for line in
               Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("cpu MHz")]
        if mhz:
            return max(mhz) / 1000, "/proc/cpuinfo cpu MHz"
    except (OSError, ValueError):
        pass
    return None, "unknown"


def isa_flops_per_cycle(isa: tuple[str, ...] | list[str]) -> tuple[int, float, str]:
    """FP32 FLOP/cycle/core (2 FMA units x lanes x 2), the int8 multiplier, and why."""
    isa = set(isa)
    if "avx512f" in isa:
        fp32, what = 64, "AVX-512: 2 FMA x 16 lanes x 2"
    elif {"avx2", "fma"} <= isa:
        fp32, what = 32, "AVX2+FMA: 2 FMA x 8 lanes x 2"
    elif "asimd" in isa:
        fp32, what = 16, "NEON: 2 FMA x 4 lanes x 2"
    elif "avx" in isa:
        fp32, what = 16, "AVX: 8 lanes x (add + mul)"
    else:
        fp32, what = 8, "SSE: 4 lanes x (add + mul)"
    dot = isa & {"avx512_vnni", "avx_vnni", "asimddp", "i8mm", "amx_int8"}
    int8 = 4.0 if dot else 2.0
    why = f"int8 {int8:g}x fp32 ({'dot-product ' + ', '.join(sorted(dot)) if dot else 'no dot-product ISA'})"
    return fp32, int8, f"{what}; {why}"


@lru_cache(maxsize=1)
def measure_bandwidth_gbs() -> tuple[float, str]:
    """Copy bandwidth of this machine with numpy: best of 5 copies of 256 MB (read+write)."""
    src = np.ones(64 * 1024 * 1024, dtype=np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    gbs = 2 * src.nbytes / best / 1e9
    return gbs, f"numpy copy of {src.nbytes >> 20} MB, read+write bytes / best of 5 = {gbs:.1f} GB/s"


def _host_basis(unit: ComputeUnit) -> dict:
    host = detect_host()
    cores = unit.cores or host["cores"]
    isa = unit.isa or host["isa"]
    clock, clock_src = (unit.clock_ghz, "profile") if unit.clock_ghz else host_clock_ghz()
    if clock is None:
        clock, clock_src = 2.0, "not detected: 2.0 GHz assumed"
    per_cycle, int8_x, why = isa_flops_per_cycle(isa)
    fp32 = cores * clock * per_cycle
    bw, bw_src = measure_bandwidth_gbs()
    cache_mb, cache_src = _host_cache_mb()
    return {
        "peak_gops": {"fp32": round(fp32, 1), "fp16": round(fp32, 1),
                      "int8": round(fp32 * int8_x, 1)},
        "bandwidth_gbs": round(bw, 2),
        "cache_mb": cache_mb,
        "sources": {
            "fp32": f"{cores} cores x {clock:.2f} GHz ({clock_src}) x {per_cycle} FLOP/cycle "
                    f"({why}) = {fp32:.1f} GFLOPS",
            "int8": f"fp32 peak x {int8_x:g} = {fp32 * int8_x:.1f} GOPS",
            "fp16": "same as fp32 (no native fp16 arithmetic assumed on a host CPU)",
            "bandwidth_gbs": bw_src,
            "cache_mb": cache_src,
        },
        "arch": _arch(isa) or platform.machine(),
        "cpu": host["name"],
    }


def _host_cache_mb() -> tuple[float, str]:
    """Size of the largest cache cpu0 sees (the last level), from /sys."""
    best = 0.0
    for size in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = size.read_text().strip()
            value = float(text.rstrip("KMG")) * {"K": 1 / 1024, "M": 1.0, "G": 1024.0}.get(
                text[-1], 1 / 1024 / 1024)
        except (OSError, ValueError):
            continue
        best = max(best, value)
    if best:
        return best, "/sys/devices/system/cpu/cpu0/cache (largest level)"
    return DEFAULT_CACHE_MB, f"not detected: {DEFAULT_CACHE_MB:g} MB assumed"


def _arch(isa) -> str | None:
    isa = set(isa or ())
    if isa & ARM_ISA_FLAGS:
        return "aarch64"
    if isa & {"sse4_2", "avx", "avx2", "avx512f"}:
        return "x86_64"
    return None


def unit_basis(profile: DeviceProfile, unit: ComputeUnit) -> dict:
    """Peaks (GOPS per precision) and bandwidth (GB/s) of a unit, with where they come from.

    Raises:
        MissingPeakFigures: the unit is not the host and its profile has no peaks or no
            bandwidth.
    """
    if profile.host and unit.kind == "cpu":
        return _host_basis(unit)
    missing = [name for name, ok in (("peak_gops", bool(unit.peak_gops)),
                                     ("bandwidth_gbs", unit.bandwidth_gbs is not None)) if not ok]
    if missing:
        msg = (f"cannot estimate for {profile.id}:{unit.id}: its profile lacks "
               f"{' and '.join(missing)} (add them to devices.yaml with their source)")
        raise MissingPeakFigures(msg)
    peaks = {p: f.value for p, f in unit.peak_gops.items()}
    sources = {p: f.source for p, f in unit.peak_gops.items()}
    if "fp32" not in peaks:
        peaks["fp32"] = min(peaks.values())
        sources["fp32"] = "not in the profile: its lowest peak used"
    for prec, factor in (("int8", 2.0), ("fp16", 1.0)):
        if prec not in peaks:
            peaks[prec] = peaks["fp32"] * factor
            sources[prec] = f"not in the profile: fp32 peak x {factor:g}"
    sources["bandwidth_gbs"] = unit.bandwidth_gbs.source
    sources["cache_mb"] = f"not in the profile: {DEFAULT_CACHE_MB:g} MB assumed"
    return {"peak_gops": peaks, "bandwidth_gbs": unit.bandwidth_gbs.value,
            "cache_mb": DEFAULT_CACHE_MB, "sources": sources,
            "arch": _arch(unit.isa) or "unknown"}
