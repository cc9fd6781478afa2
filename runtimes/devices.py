"""devices.yaml: loaded once, validated in one pass, turned into frozen dataclasses.

The schema is documented in the header of devices.yaml itself; the validation is in
:mod:`edgeopt.runtimes._profile_validation`.
"""

from __future__ import annotations

import difflib
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.runtimes.errors import InvalidDeviceProfiles, UnknownDevice

KINDS = ("cpu", "igpu", "npu", "vpu")
PRECISIONS = ("fp32", "fp16", "int8")
ARCHS = ("x86_64", "aarch64")
PROFILE_KEYS = {"name", "vendor", "source", "host", "units", "note", "match"}
UNIT_KEYS = {"id", "kind", "adapters", "precisions", "arch", "source", "cores", "clusters",
             "clock_ghz", "isa", "peak_gops", "memory_gb", "memory_type", "memory_shared",
             "bandwidth_gbs", "qemu_cpu", "qemu_cpu_note", "supported", "note",
             "unsupported_since", "last_supported_release"}
CLUSTER_KEYS = {"core", "count", "clock_ghz"}
# Facts about a unit that are not Figures: the unit's `source` says where they come from
# (required of the shipped profiles by tests/unit/test_devices.py; optional in a user's own
# file, as before it existed).
FACT_KEYS = ("cores", "clusters", "clock_ghz", "isa", "memory_gb", "memory_type")

# The ISA extensions that decide which inference kernels a CPU runs, spelled as Linux's
# /proc/cpuinfo spells them ("flags" on x86, "Features" on arm64).
X86_ISA = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
           "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
ARM_ISA = ("asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve", "sve2")
INFERENCE_ISA = X86_ISA + ARM_ISA

# The aarch64 CPU models qemu-user 10.0 (Debian trixie's qemu-user, see DESIGN.md) accepts
# in QEMU_CPU / -cpu. Source: qemu v10.0 target/arm/cpu64.c aarch64_cpus[] (cortex-a57,
# cortex-a53, max; "host" is KVM/HVF only) and target/arm/tcg/cpu64.c aarch64_cpus[]
# (cortex-a35, cortex-a55, cortex-a72, cortex-a76, cortex-a710, a64fx, neoverse-n1,
# neoverse-v1, neoverse-n2); checked against `qemu-aarch64 -cpu help` of Debian's
# 1:10.0.13+ds-0+deb13u1. cortex-a78ae came to qemu after 10.0 (10.0.13: "unable to find
# CPU model 'cortex-a78ae'").
QEMU_AARCH64_CPUS = ("cortex-a35", "cortex-a53", "cortex-a55", "cortex-a57", "cortex-a72",
                     "cortex-a76", "cortex-a710", "a64fx", "neoverse-n1", "neoverse-v1",
                     "neoverse-n2", "max")

# Which unit kinds and CPU architecture each adapter runs on. An adapter not listed here
# (a newer one) is only checked for being registered.
ADAPTER_RULES: dict[str, tuple[tuple[str, ...], str]] = {
    "ort-cpu": (("cpu",), "x86_64"),
    "ov-cpu": (("cpu",), "x86_64"),
    "ov-gpu": (("igpu",), "x86_64"),
    "ov-npu": (("npu", "vpu"), "x86_64"),
    "ort-openvino": (("cpu", "igpu", "npu", "vpu"), "x86_64"),
    "ort-arm": (("cpu",), "aarch64"),
    "ov-arm": (("cpu",), "aarch64"),
}
VPU_ALIAS_NOTE = ("'{device}:vpu' is {device}:{unit} (an NPU): the MYRIAD VPU plugin was removed "
                  "in OpenVINO 2023.0 (2022.3 LTS was the last release with it); NPUs run on "
                  "OpenVINO's NPU plugin")


@dataclass(frozen=True)
class Figure:
    """A number with where it comes from (a vendor page, or ``derived: <arithmetic>``)."""

    value: float
    source: str


@dataclass(frozen=True)
class CoreCluster:
    """A group of identical cores in a heterogeneous CPU (P/E cores, big.LITTLE)."""

    core: str
    count: int
    clock_ghz: float | None = None


@dataclass(frozen=True)
class ComputeUnit:
    """One compute unit of a device, and the adapters that run models on it.

    ``source`` covers the facts that are not Figures (cores, clusters, clock_ghz, isa,
    memory_gb, memory_type). ``memory_shared`` means memory_gb and bandwidth_gbs are the
    system memory the unit shares with the device's other units. ``supported`` is False for
    hardware no current runtime drives; then ``note`` says why, with ``unsupported_since``
    and ``last_supported_release``.
    """

    id: str
    kind: str
    adapters: tuple[str, ...]
    precisions: tuple[str, ...]
    cores: int | None = None
    clock_ghz: float | None = None
    isa: tuple[str, ...] = ()
    peak_gops: dict[str, Figure] = field(default_factory=dict)
    memory_gb: float | None = None
    bandwidth_gbs: Figure | None = None
    qemu_cpu: str | None = None
    arch: str | None = None
    source: str | None = None
    clusters: tuple[CoreCluster, ...] = ()
    memory_type: str | None = None
    memory_shared: bool = False
    qemu_cpu_note: str | None = None
    supported: bool = True
    note: str | None = None
    unsupported_since: str | None = None
    last_supported_release: str | None = None


@dataclass(frozen=True)
class DeviceProfile:
    id: str
    name: str
    units: tuple[ComputeUnit, ...]
    vendor: str | None = None
    source: str | None = None
    host: bool = False
    note: str | None = None
    # Regular expressions; the device is this machine when one matches its identity (CPU
    # model name, board model): only then is a figure for it "measured".
    match: tuple[str, ...] = ()

    @property
    def supported(self) -> bool:
        """Whether any unit of the device runs on a current runtime."""
        return any(u.supported for u in self.units)


class DeviceCatalog:
    """The validated profiles, by id."""

    def __init__(self, profiles: dict[str, DeviceProfile], source: str) -> None:
        self._profiles = profiles
        self.source = source
        self.notes: list[str] = []   # what resolve() had to say (aliases, unsupported units)

    def ids(self) -> list[str]:
        return list(self._profiles)

    def get(self, device_id: str) -> DeviceProfile:
        if device_id in self._profiles:
            return self._profiles[device_id]
        close = difflib.get_close_matches(device_id, self.ids(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        msg = f"unknown device '{device_id}'{hint} (edgeopt devices list)"
        raise UnknownDevice(msg)

    def resolve(self, name: str) -> tuple[DeviceProfile, ComputeUnit]:
        """``ID`` (its first unit) or ``ID:UNIT``; ``ID:vpu`` is the device's NPU unit.

        A note (alias used, unit unsupported) is appended to ``self.notes``; callers that
        show it should use :meth:`resolve_with_note`.
        """
        profile, unit, note = self.resolve_with_note(name)
        if note and note not in self.notes:
            self.notes.append(note)
        return profile, unit

    def resolve_with_note(self, name: str) -> tuple[DeviceProfile, ComputeUnit, str | None]:
        """Like :meth:`resolve`, plus what the user should be told about the unit, or None."""
        device_id, _, unit_id = name.partition(":")
        profile = self.get(device_id)
        notes = []
        if not unit_id:
            unit = profile.units[0]
        else:
            unit = next((u for u in profile.units if u.id == unit_id), None)
            if unit is None and unit_id == "vpu":
                npus = [u for u in profile.units if u.kind == "npu"]
                unit = next((u for u in npus if u.id == "npu"), npus[0] if npus else None)
                if unit is not None:
                    notes.append(VPU_ALIAS_NOTE.format(device=profile.id, unit=unit.id))
            if unit is None:
                units = ", ".join(u.id for u in profile.units)
                msg = f"device '{device_id}' has no unit '{unit_id}' (its units: {units})"
                raise UnknownDevice(msg)
        if not unit.supported:
            notes.append(f"{profile.id}:{unit.id} is not supported by current runtimes: "
                         f"{unit.note}")
        return profile, unit, "; ".join(notes) or None


def default_path() -> Path:
    env = os.environ.get("EDGEOPT_DEVICES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here / "devices.yaml", here.parent / "devices.yaml"):
        if candidate.is_file():
            return candidate
    return here / "devices.yaml"


def _machine_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def host_identity() -> str:
    """What this machine says it is: CPU model name and, on boards, the device-tree model."""
    parts = [detect_host()["name"]]
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            parts.append(Path(path).read_bytes().rstrip(b"\0").decode(errors="replace"))
            break
        except OSError:
            continue
    if platform.system() == "Darwin":
        import subprocess

        try:
            parts.append(subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                        capture_output=True, text=True, timeout=5).stdout)
        except (OSError, subprocess.SubprocessError):
            pass
    return " | ".join(p.strip() for p in parts if p and p.strip())


def absent_reason(profile: DeviceProfile, identity: str | None = None) -> str | None:
    """None when ``profile`` is this machine (the host profile, or one whose ``match``
    fits the host's identity); else why a figure measured here would not be its figure."""
    if profile.host:
        return None
    identity = host_identity() if identity is None else identity
    if any(re.search(pattern, identity) for pattern in profile.match):
        return None
    return f"this machine is {identity or 'unknown'}, not {profile.name}"


def detect_host() -> dict:
    """CPU model, cores, inference ISA flags, architecture and memory of the running machine."""
    info = {"name": platform.processor() or platform.machine(), "cores": os.cpu_count() or 1,
            "isa": (), "memory_gb": None, "arch": _machine_arch()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags: set[str] = set()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in {"model name", "Model", "Hardware"} and value.strip():
                info["name"] = value.strip()
            elif key in {"flags", "Features"}:
                flags.update(value.split())
        info["isa"] = tuple(f for f in INFERENCE_ISA if f in flags)
    except OSError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        info["cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    return info


def load_devices(path: Path | None = None) -> DeviceCatalog:
    import yaml

    import edgeopt.runtimes as registry
    from edgeopt.runtimes._profile_validation import parse_profiles

    path = Path(path) if path else default_path()
    source = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidDeviceProfiles(str(path), [f"cannot read it ({e.strerror or e})"]) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise InvalidDeviceProfiles(source, [f"{where}not valid YAML ({problem})"]) from e
    aliases = {alias: target[0]
               for alias, target in getattr(registry, "ADAPTER_ALIASES", {}).items()}
    return DeviceCatalog(parse_profiles(data, source, set(registry.ADAPTERS), aliases), str(path))
