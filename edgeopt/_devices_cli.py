"""`edgeopt devices list|show`: the profiles in devices.yaml and what runs here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def _usable(adapter_name: str) -> dict:
    from edgeopt.runtimes import get_adapter

    availability = get_adapter(adapter_name).available()
    return {"adapter": adapter_name, "usable_here": availability.ok,
            "reason": None if availability.ok else availability.reason}


def _profile_dict(profile, with_usability: bool = True) -> dict:
    data = dataclasses.asdict(profile)
    if with_usability:
        for unit, raw in zip(profile.units, data["units"], strict=True):
            raw["adapter_status"] = [_usable(a) for a in unit.adapters]
    return data


def run_devices(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from edgeopt._tables import console_width
    from edgeopt.runtimes import load_devices

    catalog = load_devices()
    console = Console(width=console_width())
    if args.devices_command == "list":
        profiles = [catalog.get(i) for i in catalog.ids()]
        if args.json:
            sys.stdout.write(json.dumps([_profile_dict(p) for p in profiles], indent=2,
                                        default=str) + "\n")
            return 0
        table = Table(title="device profiles")
        for col in ("id", "name", "units", "adapters usable here"):
            table.add_column(col)
        for p in profiles:
            units = ", ".join(f"{u.id} ({u.kind})" for u in p.units)
            usable = []
            for u in p.units:
                for a in u.adapters:
                    status = _usable(a)
                    mark = "[green]yes[/green]" if status["usable_here"] else "[red]no[/red]"
                    usable.append(f"{u.id}/{a}: {mark}")
            table.add_row(p.id, p.name, units, ", ".join(usable))
        console.print(table)
        return 0
    profile = catalog.get(args.id)
    data = _profile_dict(profile)
    if args.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return 0
    console.print(f"[bold]{profile.id}[/bold]: {profile.name}")
    for unit, raw in zip(profile.units, data["units"], strict=True):
        console.print(f"  unit [bold]{unit.id}[/bold] ({unit.kind})")
        for key, value in raw.items():
            if key in {"id", "kind", "adapter_status"} or value in (None, (), [], {}):
                continue
            console.print(f"    {key}: {', '.join(map(str, value)) if isinstance(value, (list, tuple)) else value}")
        for status in raw["adapter_status"]:
            state = "usable here" if status["usable_here"] else f"not usable here: {status['reason']}"
            console.print(f"    adapter {status['adapter']}: {state}")
    return 0
