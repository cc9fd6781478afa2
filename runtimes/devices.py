"""devices.yaml: loaded once, validated in one pass, turned into frozen dataclasses."""

from __future__ import annotations

import difflib
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgeopt.runtimes.errors import InvalidDeviceProfiles, UnknownDevice

KINDS = ("cpu", "igpu", "npu", "vpu")
PRECISIONS = ("fp32", "fp16", "int8")
PROFILE_KEYS = {"name", "vendor", "source", "host", "units"}
UNIT_KEYS = {"id", "kind", "adapters", "precisions", "cores", "clock_ghz", "isa", "peak_gops",
             "memory_gb", "bandwidth_gbs", "qemu_cpu"}
# The ISA extensions that decide which inference kernels a CPU runs.
INFERENCE_ISA = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
                 "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd",
                 "asimddp", "i8mm", "sve", "bf16")


@dataclass(frozen=True)
class Figure:
    value: float
    source: str


@dataclass(frozen=True)
class ComputeUnit:
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


@dataclass(frozen=True)
class DeviceProfile:
    id: str
    name: str
    units: tuple[ComputeUnit, ...]
    vendor: str | None = None
    source: str | None = None
    host: bool = False


class DeviceCatalog:
    """The validated profiles, by id."""

    def __init__(self, profiles: dict[str, DeviceProfile], source: str) -> None:
        self._profiles = profiles
        self.source = source

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
        """``ID`` (its first unit) or ``ID:UNIT``."""
        device_id, _, unit_id = name.partition(":")
        profile = self.get(device_id)
        if not unit_id:
            return profile, profile.units[0]
        for unit in profile.units:
            if unit.id == unit_id:
                return profile, unit
        units = ", ".join(u.id for u in profile.units)
        msg = f"device '{device_id}' has no unit '{unit_id}' (its units: {units})"
        raise UnknownDevice(msg)


def default_path() -> Path:
    env = os.environ.get("EDGEOPT_DEVICES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here / "devices.yaml", here.parent / "devices.yaml"):
        if candidate.is_file():
            return candidate
    return here / "devices.yaml"


def detect_host() -> dict:
    """CPU model, cores, inference ISA flags and memory of the running machine."""
    info = {"name": platform.processor() or platform.machine(), "cores": os.cpu_count() or 1,
            "isa": (), "memory_gb": None}
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


def _figure(raw, path: str, problems: list[str]) -> Figure | None:
    if not isinstance(raw, dict) or "value" not in raw or "source" not in raw:
        problems.append(f"{path}: expected {{value: number, source: text}}")
        return None
    if not isinstance(raw["value"], (int, float)) or isinstance(raw["value"], bool):
        problems.append(f"{path}.value: {raw['value']!r} is not a number")
        return None
    return Figure(float(raw["value"]), str(raw["source"]))


def _unit(raw, path: str, problems: list[str], adapters: set[str]) -> ComputeUnit | None:
    if not isinstance(raw, dict):
        problems.append(f"{path}: expected a mapping")
        return None
    before = len(problems)
    for key in sorted(set(raw) - UNIT_KEYS):
        problems.append(f"{path}.{key}: unknown key (known: {', '.join(sorted(UNIT_KEYS))})")
    for key in ("id", "kind", "adapters", "precisions"):
        if key not in raw:
            problems.append(f"{path}.{key}: missing")
    kind = raw.get("kind")
    if kind is not None and kind not in KINDS:
        problems.append(f"{path}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    for key, allowed, label in (("adapters", adapters, "a known adapter"),
                                ("precisions", set(PRECISIONS), None)):
        values = raw.get(key, [])
        if not isinstance(values, list):
            problems.append(f"{path}.{key}: expected a list")
            continue
        for i, v in enumerate(values):
            if v not in allowed:
                choices = label or f"one of {', '.join(PRECISIONS)}"
                known = f" ({', '.join(sorted(allowed))})" if label else ""
                problems.append(f"{path}.{key}[{i}]: {v!r} is not {choices}{known}")
    for key in ("cores",):
        if key in raw and (not isinstance(raw[key], int) or raw[key] < 1):
            problems.append(f"{path}.{key}: {raw[key]!r} is not a positive integer")
    for key in ("clock_ghz", "memory_gb"):
        if key in raw and (not isinstance(raw[key], (int, float)) or raw[key] <= 0):
            problems.append(f"{path}.{key}: {raw[key]!r} is not a positive number")
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
    return ComputeUnit(
        id=str(raw["id"]), kind=kind, adapters=tuple(raw["adapters"]),
        precisions=tuple(raw["precisions"]), cores=raw.get("cores"),
        clock_ghz=raw.get("clock_ghz"), isa=tuple(raw.get("isa", ())), peak_gops=peak,
        memory_gb=raw.get("memory_gb"), bandwidth_gbs=bandwidth, qemu_cpu=raw.get("qemu_cpu"),
    )


def parse_profiles(data, source: str, adapters: set[str]) -> dict[str, DeviceProfile]:
    """Validate the whole document, collecting every problem before raising."""
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
        for key in sorted(set(raw) - PROFILE_KEYS):
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
                unit = _unit(u, f"{device_id}.units[{i}]", problems, adapters)
                if unit is None:
                    continue
                if unit.id in seen:
                    problems.append(f"{device_id}.units[{i}].id: duplicate unit id {unit.id!r}")
                seen.add(unit.id)
                units.append(unit)
        if len(problems) > before:
            continue
        profile = DeviceProfile(id=str(device_id), name=str(raw["name"]), units=tuple(units),
                                vendor=raw.get("vendor"), source=raw.get("source"),
                                host=bool(raw.get("host", False)))
        profiles[device_id] = _fill_host(profile) if profile.host else profile
    if problems:
        raise InvalidDeviceProfiles(source, problems)
    return profiles


def _fill_host(profile: DeviceProfile) -> DeviceProfile:
    host = detect_host()
    units = tuple(
        replace(u, cores=u.cores or host["cores"], isa=u.isa or host["isa"],
                memory_gb=u.memory_gb or host["memory_gb"]) if u.kind == "cpu" else u
        for u in profile.units
    )
    return replace(profile, name=host["name"], units=units)


def load_devices(path: Path | None = None) -> DeviceCatalog:
    import yaml

    from edgeopt.runtimes import ADAPTERS

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
    return DeviceCatalog(parse_profiles(data, source, set(ADAPTERS)), str(path))
