"""devices.yaml: loaded once, validated in one pass, turned into frozen dataclasses.

The schema is documented in the header of devices.yaml itself.
"""

from __future__ import annotations

import difflib
import os
import platform
import re
from dataclasses import dataclass, field, replace
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
_TEXT_KEYS = ("source", "memory_type", "qemu_cpu_note", "note", "unsupported_since",
              "last_supported_release")

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


# ---------------------------------------------------------------------------- validation

def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _figure(raw, path: str, problems: list[str]) -> Figure | None:
    if not isinstance(raw, dict) or "value" not in raw or "source" not in raw:
        problems.append(f"{path}: expected {{value: number, source: text}}")
        return None
    ok = True
    if not _is_number(raw["value"]):
        problems.append(f"{path}.value: {raw['value']!r} is not a number")
        ok = False
    elif raw["value"] <= 0:
        problems.append(f"{path}.value: {raw['value']!r} is not a positive number")
        ok = False
    if not isinstance(raw["source"], str) or not raw["source"].strip():
        problems.append(f"{path}.source: empty; say where the figure comes from "
                        "(a vendor page, or 'derived: <arithmetic>')")
        ok = False
    return Figure(float(raw["value"]), raw["source"].strip()) if ok else None


def _clusters(raw, path: str, problems: list[str]) -> tuple[CoreCluster, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append(f"{path}: expected a non-empty list of {{core, count, clock_ghz}}")
        return ()
    clusters = []
    for i, c in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(c, dict):
            problems.append(f"{where}: expected a mapping {{core, count, clock_ghz}}")
            continue
        before = len(problems)
        for key in sorted(set(c) - CLUSTER_KEYS, key=str):
            problems.append(f"{where}.{key}: unknown key (known: {', '.join(sorted(CLUSTER_KEYS))})")
        if not isinstance(c.get("core"), str) or not c["core"].strip():
            problems.append(f"{where}.core: missing (the core's name, e.g. Cortex-A76)")
        count = c.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            problems.append(f"{where}.count: {count!r} is not a positive integer")
        clock = c.get("clock_ghz")
        if clock is not None and (not _is_number(clock) or clock <= 0):
            problems.append(f"{where}.clock_ghz: {clock!r} is not a positive number")
        if len(problems) == before:
            clusters.append(CoreCluster(c["core"].strip(), count,
                                        float(clock) if clock is not None else None))
    return tuple(clusters)


def _check_qemu_cpu(value, path: str, problems: list[str]) -> None:
    """``MODEL`` or ``MODEL,prop=value,...`` as QEMU_CPU takes it; MODEL must be known."""
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{path}: {value!r} is not a qemu CPU model name")
        return
    model, *options = value.split(",")
    if model not in QEMU_AARCH64_CPUS:
        close = difflib.get_close_matches(model, QEMU_AARCH64_CPUS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        problems.append(f"{path}: {model!r} is not an aarch64 CPU model of qemu 10.0 "
                        f"({hint}known: {', '.join(QEMU_AARCH64_CPUS)})")
    for opt in options:
        key, eq, val = opt.partition("=")
        if not (key and eq and val):
            problems.append(f"{path}: option {opt!r} is not prop=value")


def _check_adapters(raw, path: str, problems: list[str], adapters: set[str],
                    aliases: dict[str, str]) -> list[str]:
    """Report unknown names; return the canonical names (aliases resolved) of known ones."""
    values = raw.get("adapters", [])
    if not isinstance(values, list):
        problems.append(f"{path}.adapters: expected a list")
        return []
    canonical = []
    for i, v in enumerate(values):
        if v in adapters:
            canonical.append(v)
        elif v in aliases and aliases[v] in adapters:
            canonical.append(aliases[v])
        else:
            known = sorted(adapters | set(aliases))
            problems.append(f"{path}.adapters[{i}]: {v!r} is not a known adapter "
                            f"({', '.join(known)})")
            canonical.append(None)
    return canonical


def _unit_arch(raw, canonical: list[str | None]) -> str | None:
    """The declared arch, else the one its adapters imply (None when they imply none)."""
    if raw.get("arch") in ARCHS:
        return raw["arch"]
    implied = {ADAPTER_RULES[a][1] for a in canonical if a in ADAPTER_RULES}
    if "aarch64" in implied:
        return "aarch64"
    return "x86_64" if implied else None


def _check_placement(raw, path: str, problems: list[str], canonical: list[str | None],
                     kind, arch: str | None) -> None:
    """Each adapter runs on this unit's kind and architecture; ARM CPUs name a qemu core."""
    names = raw.get("adapters", [])
    for i, a in enumerate(canonical):
        if a not in ADAPTER_RULES:
            continue
        kinds, adapter_arch = ADAPTER_RULES[a]
        if kind in KINDS and kind not in kinds:
            problems.append(f"{path}.adapters[{i}]: {names[i]!r} runs on "
                            f"{'/'.join(kinds)} units, not {kind}")
        if arch and adapter_arch != arch:
            same = [n for n, (k, ar) in ADAPTER_RULES.items() if ar == arch and kind in k]
            problems.append(f"{path}.adapters[{i}]: {names[i]!r} is an {adapter_arch} adapter "
                            f"but this unit is {arch} (use {', '.join(same) or 'none'})")
    if "qemu_cpu" in raw:
        if arch != "aarch64":
            problems.append(f"{path}.qemu_cpu: only aarch64 units are emulated with qemu")
        else:
            _check_qemu_cpu(raw["qemu_cpu"], f"{path}.qemu_cpu", problems)
    elif arch == "aarch64" and kind == "cpu":
        problems.append(f"{path}.qemu_cpu: missing (an aarch64 cpu unit names the core qemu "
                        f"emulates: one of {', '.join(QEMU_AARCH64_CPUS)})")
    isa = raw.get("isa", [])
    if not isinstance(isa, list):
        problems.append(f"{path}.isa: expected a list")
        return
    for i, flag in enumerate(isa):
        if flag not in INFERENCE_ISA:
            problems.append(f"{path}.isa[{i}]: {flag!r} is not one of {', '.join(INFERENCE_ISA)}")
        elif arch and (flag in ARM_ISA) != (arch == "aarch64"):
            problems.append(f"{path}.isa[{i}]: {flag!r} is not an {arch} flag")


def _check_support(raw, path: str, problems: list[str]) -> bool:
    supported = raw.get("supported", True)
    if not isinstance(supported, bool):
        problems.append(f"{path}.supported: {supported!r} is not true or false")
        return True
    if not supported and not raw.get("note"):
        problems.append(f"{path}.note: missing (an unsupported unit says why, and which "
                        "release last ran it)")
    if supported and isinstance(raw.get("adapters"), list) and not raw["adapters"]:
        problems.append(f"{path}.adapters: empty (only a unit marked 'supported: false' "
                        "may have no adapter)")
    return supported


def _unit(raw, path: str, problems: list[str], adapters: set[str],
          aliases: dict[str, str]) -> ComputeUnit | None:
    if not isinstance(raw, dict):
        problems.append(f"{path}: expected a mapping")
        return None
    before = len(problems)
    for key in sorted(set(raw) - UNIT_KEYS, key=str):
        problems.append(f"{path}.{key}: unknown key (known: {', '.join(sorted(UNIT_KEYS))})")
    for key in ("id", "kind", "adapters", "precisions"):
        if key not in raw:
            problems.append(f"{path}.{key}: missing")
    kind = raw.get("kind")
    if kind is not None and kind not in KINDS:
        problems.append(f"{path}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    if "arch" in raw and raw["arch"] not in ARCHS:
        problems.append(f"{path}.arch: {raw['arch']!r} is not one of {', '.join(ARCHS)}")
    canonical = _check_adapters(raw, path, problems, adapters, aliases)
    precisions = raw.get("precisions", [])
    if not isinstance(precisions, list):
        problems.append(f"{path}.precisions: expected a list")
    else:
        for i, v in enumerate(precisions):
            if v not in PRECISIONS:
                problems.append(f"{path}.precisions[{i}]: {v!r} is not one of "
                                f"{', '.join(PRECISIONS)}")
    arch = _unit_arch(raw, canonical)
    _check_placement(raw, path, problems, canonical, kind, arch)
    supported = _check_support(raw, path, problems)
    if "cores" in raw and (not isinstance(raw["cores"], int) or isinstance(raw["cores"], bool)
                           or raw["cores"] < 1):
        problems.append(f"{path}.cores: {raw['cores']!r} is not a positive integer")
    for key in ("clock_ghz", "memory_gb"):
        if key in raw and (not _is_number(raw[key]) or raw[key] <= 0):
            problems.append(f"{path}.{key}: {raw[key]!r} is not a positive number")
    for key in _TEXT_KEYS:
        if key in raw and (not isinstance(raw[key], str) or not raw[key].strip()):
            problems.append(f"{path}.{key}: expected non-empty text")
    if "memory_shared" in raw and not isinstance(raw["memory_shared"], bool):
        problems.append(f"{path}.memory_shared: {raw['memory_shared']!r} is not true or false")
    clusters = _clusters(raw["clusters"], f"{path}.clusters", problems) \
        if "clusters" in raw else ()
    if clusters and isinstance(raw.get("cores"), int):
        total = sum(c.count for c in clusters)
        if total != raw["cores"]:
            problems.append(f"{path}.clusters: counts add up to {total}, not cores "
                            f"({raw['cores']})")
    peak = {}
    if "peak_gops" in raw:
        if not isinstance(raw["peak_gops"], dict):
            problems.append(f"{path}.peak_gops: expected a mapping of precision to figure")
        else:
            for prec, fig in raw["peak_gops"].items():
                if prec not in PRECISIONS:
                    problems.append(f"{path}.peak_gops.{prec}: not one of {', '.join(PRECISIONS)}")
                f = _figure(fig, f"{path}.peak_gops.{prec}", problems)
                if f:
                    peak[prec] = f
    bandwidth = _figure(raw["bandwidth_gbs"], f"{path}.bandwidth_gbs", problems) \
        if "bandwidth_gbs" in raw else None
    if len(problems) > before:
        return None
    text = {k: raw[k].strip() for k in _TEXT_KEYS if k in raw}
    return ComputeUnit(
        id=str(raw["id"]), kind=kind, adapters=tuple(raw["adapters"]),
        precisions=tuple(precisions), cores=raw.get("cores"),
        clock_ghz=raw.get("clock_ghz"), isa=tuple(raw.get("isa", ())), peak_gops=peak,
        memory_gb=raw.get("memory_gb"), bandwidth_gbs=bandwidth, qemu_cpu=raw.get("qemu_cpu"),
        arch=raw.get("arch") or (arch if "adapters" in raw else None), clusters=clusters,
        memory_shared=raw.get("memory_shared", False), supported=supported, **text,
    )


def parse_profiles(data, source: str, adapters: set[str],
                   aliases: dict[str, str] | None = None) -> dict[str, DeviceProfile]:
    """Validate the whole document, collecting every problem before raising.

    Args:
        data: the parsed YAML document.
        source: the file's name, for messages.
        adapters: the registered adapter names.
        aliases: other accepted adapter names -> the registered name they stand for.
    """
    aliases = aliases or {}
    problems: list[str] = []
    if not isinstance(data, dict):
        raise InvalidDeviceProfiles(source, ["top level: expected a mapping"])
    if data.get("schema_version") != 1:
        problems.append(f"schema_version: {data.get('schema_version')!r} is not 1")
    devices = data.get("devices")
    if not isinstance(devices, dict) or not devices:
        problems.append("devices: expected a non-empty mapping of id to profile")
        raise InvalidDeviceProfiles(source, problems)
    profiles = {}
    for device_id, raw in devices.items():
        if not isinstance(raw, dict):
            problems.append(f"{device_id}: expected a mapping")
            continue
        before = len(problems)
        for key in sorted(set(raw) - PROFILE_KEYS, key=str):
            problems.append(f"{device_id}.{key}: unknown key "
                            f"(known: {', '.join(sorted(PROFILE_KEYS))})")
        if "name" not in raw:
            problems.append(f"{device_id}.name: missing")
        units_raw = raw.get("units")
        units = []
        if not isinstance(units_raw, list) or not units_raw:
            problems.append(f"{device_id}.units: expected a non-empty list")
        else:
            seen = set()
            for i, u in enumerate(units_raw):
                unit = _unit(u, f"{device_id}.units[{i}]", problems, adapters, aliases)
                if unit is None:
                    continue
                if unit.id in seen:
                    problems.append(f"{device_id}.units[{i}].id: duplicate unit id {unit.id!r}")
                seen.add(unit.id)
                units.append(unit)
        if len(problems) > before:
            continue
        match = raw.get("match", [])
        if isinstance(match, str):
            match = [match]
        for i, pattern in enumerate(match if isinstance(match, list) else [None]):
            try:
                re.compile(pattern)
            except (re.error, TypeError):
                problems.append(f"{device_id}.match[{i}]: {pattern!r} is not a regular expression")
        if len(problems) > before:
            continue
        profile = DeviceProfile(id=str(device_id), name=str(raw["name"]), units=tuple(units),
                                vendor=raw.get("vendor"), source=raw.get("source"),
                                host=bool(raw.get("host", False)), note=raw.get("note"),
                                match=tuple(match))
        profiles[device_id] = _fill_host(profile) if profile.host else profile
    if problems:
        raise InvalidDeviceProfiles(source, problems)
    return profiles


def _fill_host(profile: DeviceProfile) -> DeviceProfile:
    host = detect_host()
    units = tuple(
        replace(u, cores=u.cores or host["cores"], isa=u.isa or host["isa"],
                memory_gb=u.memory_gb or host["memory_gb"], arch=host["arch"])
        if u.kind == "cpu" else u
        for u in profile.units
    )
    return replace(profile, name=host["name"], units=units)


def load_devices(path: Path | None = None) -> DeviceCatalog:
    import yaml

    import edgeopt.runtimes as registry

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
