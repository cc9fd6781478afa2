"""`edgeopt devices list|show`: the profiles in devices.yaml and what runs here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def _usable(adapter_name: str, unit=None, absent: str | None = None) -> dict:
    from edgeopt.runtimes import Availability, get_adapter

    availability = (Availability(False, absent) if absent
                    else get_adapter(adapter_name).available(unit))
    return {"adapter": adapter_name, "usable_here": availability.ok,
            "reason": None if availability.ok else availability.reason}


def _profile_dict(profile, with_usability: bool = True) -> dict:
    from edgeopt.runtimes.devices import absent_reason

    data = dataclasses.asdict(profile)
    if with_usability:
        absent = absent_reason(profile)
        data["present_here"] = absent is None
        for unit, raw in zip(profile.units, data["units"], strict=True):
            raw["adapter_status"] = [_usable(a, unit, absent) for a in unit.adapters]
    return data


def run_devices(args: argparse.Namespace) -> int:
    from edgeopt._output import Output
    from edgeopt.runtimes import load_devices

    catalog = load_devices()
    out = Output()
    if args.devices_command == "list":
        profiles = [catalog.get(i) for i in catalog.ids()]
        data = [_profile_dict(p) for p in profiles]
        if args.json:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
            return 0
        rows = []
        for profile, raw in zip(profiles, data, strict=True):
            for unit, raw_unit in zip(profile.units, raw["units"], strict=True):
                usable = ", ".join(
                    f"{s['adapter']}: {'yes' if s['usable_here'] else 'no'}"
                    for s in raw_unit["adapter_status"])
                rows.append([profile.id, profile.name, unit.id, unit.kind, usable])
        out.table(f"device profiles ({catalog.source})",
                  ["id", "name", "unit", "kind", "adapters usable here"], rows)
        return 0
    profile = catalog.get(args.id)
    data = _profile_dict(profile)
    if args.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return 0
    lines = [f"{profile.id}: {profile.name}"]
    for unit, raw in zip(profile.units, data["units"], strict=True):
        lines.append(f"  unit {unit.id} ({unit.kind})")
        for key, value in raw.items():
            if key in {"id", "kind", "adapter_status"} or value in (None, (), [], {}):
                continue
            shown = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            lines.append(f"    {key}: {shown}")
        for status in raw["adapter_status"]:
            state = ("usable here" if status["usable_here"]
                     else f"not usable here: {status['reason']}")
            lines.append(f"    adapter {status['adapter']}: {state}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
