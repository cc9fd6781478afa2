"""devices.yaml validation: one pass over the parsed document, every problem with its key path.

Turns the raw mapping into the frozen dataclasses of :mod:`edgeopt.runtimes.devices`; no
other code sees raw dicts.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import replace

from edgeopt.runtimes.devices import (
    ADAPTER_RULES,
    ARCHS,
    ARM_ISA,
    CLUSTER_KEYS,
    INFERENCE_ISA,
    KINDS,
    PRECISIONS,
    PROFILE_KEYS,
    QEMU_AARCH64_CPUS,
    UNIT_KEYS,
    ComputeUnit,
    CoreCluster,
    DeviceProfile,
    Figure,
    detect_host,
)
from edgeopt.runtimes.errors import InvalidDeviceProfiles

_TEXT_KEYS = ("source", "memory_type", "qemu_cpu_note", "note", "unsupported_since",
              "last_supported_release")


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
    _check_unit_keys(raw, path, problems)
    canonical = _check_adapters(raw, path, problems, adapters, aliases)
    precisions = _check_precisions(raw, path, problems)
    arch = _unit_arch(raw, canonical)
    _check_placement(raw, path, problems, canonical, raw.get("kind"), arch)
    supported = _check_support(raw, path, problems)
    _check_unit_facts(raw, path, problems)
    clusters = _unit_clusters(raw, path, problems)
    peak, bandwidth = _unit_figures(raw, path, problems)
    if len(problems) > before:
        return None
    text = {k: raw[k].strip() for k in _TEXT_KEYS if k in raw}
    return ComputeUnit(
        id=str(raw["id"]), kind=raw["kind"], adapters=tuple(raw["adapters"]),
        precisions=tuple(precisions), cores=raw.get("cores"),
        clock_ghz=raw.get("clock_ghz"), isa=tuple(raw.get("isa", ())), peak_gops=peak,
        memory_gb=raw.get("memory_gb"), bandwidth_gbs=bandwidth, qemu_cpu=raw.get("qemu_cpu"),
        arch=raw.get("arch") or (arch if "adapters" in raw else None), clusters=clusters,
        memory_shared=raw.get("memory_shared", False), supported=supported, **text,
    )


def _check_unit_keys(raw: dict, path: str, problems: list[str]) -> None:
    """Unknown and missing keys; ``kind`` and ``arch`` among the known values."""
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


def _check_precisions(raw: dict, path: str, problems: list[str]) -> list:
    precisions = raw.get("precisions", [])
    if not isinstance(precisions, list):
        problems.append(f"{path}.precisions: expected a list")
        return precisions
    for i, v in enumerate(precisions):
        if v not in PRECISIONS:
            problems.append(f"{path}.precisions[{i}]: {v!r} is not one of "
                            f"{', '.join(PRECISIONS)}")
    return precisions


def _check_unit_facts(raw: dict, path: str, problems: list[str]) -> None:
    """Core count, clock and memory size, the free-text keys, memory_shared."""
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


def _unit_clusters(raw: dict, path: str, problems: list[str]) -> tuple[CoreCluster, ...]:
    """The unit's core clusters (none when not given); their counts add up to ``cores``."""
    if "clusters" not in raw:
        return ()
    clusters = _clusters(raw["clusters"], f"{path}.clusters", problems)
    if clusters and isinstance(raw.get("cores"), int):
        total = sum(c.count for c in clusters)
        if total != raw["cores"]:
            problems.append(f"{path}.clusters: counts add up to {total}, not cores "
                            f"({raw['cores']})")
    return clusters


def _unit_figures(raw: dict, path: str, problems: list[str]
                  ) -> tuple[dict[str, Figure], Figure | None]:
    """Peak throughput per precision, and memory bandwidth, each with its source."""
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
    return peak, bandwidth


def parse_profiles(data, source: str, adapters: set[str],
                   aliases: dict[str, str] | None = None) -> dict[str, DeviceProfile]:
    """Validate the whole document, collecting every problem before raising.

    Args:
        data: the parsed YAML document.
        source: the file's name, for messages.
        adapters: the registered adapter names.
        aliases: other accepted adapter names -> the registered name they stand for.

    Raises:
        InvalidDeviceProfiles: every problem found, each with its key path.
    """
    aliases = aliases or {}
    problems: list[str] = []
    devices = _devices(data, source, problems)
    profiles = {}
    for device_id, raw in devices.items():
        profile = _profile(device_id, raw, problems, adapters, aliases)
        if profile is not None:
            profiles[device_id] = _fill_host(profile) if profile.host else profile
    if problems:
        raise InvalidDeviceProfiles(source, problems)
    return profiles


def _devices(data, source: str, problems: list[str]) -> dict:
    """The document's ``devices`` mapping; raises at once when there is none to check."""
    if not isinstance(data, dict):
        raise InvalidDeviceProfiles(source, ["top level: expected a mapping"])
    if data.get("schema_version") != 1:
        problems.append(f"schema_version: {data.get('schema_version')!r} is not 1")
    devices = data.get("devices")
    if not isinstance(devices, dict) or not devices:
        problems.append("devices: expected a non-empty mapping of id to profile")
        raise InvalidDeviceProfiles(source, problems)
    return devices


def _profile(device_id, raw, problems: list[str], adapters: set[str],
             aliases: dict[str, str]) -> DeviceProfile | None:
    """One device's profile, or None when it has problems (added to ``problems``)."""
    if not isinstance(raw, dict):
        problems.append(f"{device_id}: expected a mapping")
        return None
    before = len(problems)
    for key in sorted(set(raw) - PROFILE_KEYS, key=str):
        problems.append(f"{device_id}.{key}: unknown key "
                        f"(known: {', '.join(sorted(PROFILE_KEYS))})")
    if "name" not in raw:
        problems.append(f"{device_id}.name: missing")
    units = _units(device_id, raw.get("units"), problems, adapters, aliases)
    if len(problems) > before:
        return None
    match = _match_patterns(device_id, raw.get("match", []), problems)
    if len(problems) > before:
        return None
    return DeviceProfile(id=str(device_id), name=str(raw["name"]), units=tuple(units),
                         vendor=raw.get("vendor"), source=raw.get("source"),
                         host=bool(raw.get("host", False)), note=raw.get("note"),
                         match=tuple(match))


def _units(device_id, units_raw, problems: list[str], adapters: set[str],
           aliases: dict[str, str]) -> list[ComputeUnit]:
    if not isinstance(units_raw, list) or not units_raw:
        problems.append(f"{device_id}.units: expected a non-empty list")
        return []
    units, seen = [], set()
    for i, u in enumerate(units_raw):
        unit = _unit(u, f"{device_id}.units[{i}]", problems, adapters, aliases)
        if unit is None:
            continue
        if unit.id in seen:
            problems.append(f"{device_id}.units[{i}].id: duplicate unit id {unit.id!r}")
        seen.add(unit.id)
        units.append(unit)
    return units


def _match_patterns(device_id, match, problems: list[str]):
    """``match``: one regular expression or a list (the device is this machine when one
    matches its identity)."""
    if isinstance(match, str):
        match = [match]
    for i, pattern in enumerate(match if isinstance(match, list) else [None]):
        try:
            re.compile(pattern)
        except (re.error, TypeError):
            problems.append(f"{device_id}.match[{i}]: {pattern!r} is not a regular expression")
    return match


def _fill_host(profile: DeviceProfile) -> DeviceProfile:
    host = detect_host()
    units = tuple(
        replace(u, cores=u.cores or host["cores"], isa=u.isa or host["isa"],
                memory_gb=u.memory_gb or host["memory_gb"], arch=host["arch"])
        if u.kind == "cpu" else u
        for u in profile.units
    )
    return replace(profile, name=host["name"], units=units)
