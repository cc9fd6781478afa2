"""Resolve --device names into the (device, unit, adapter) triples that will run."""

from __future__ import annotations

from dataclasses import dataclass

from edgeopt.errors import UsageError


@dataclass(frozen=True)
class Target:
    """A device compute unit and the adapter that runs one runtime on it."""

    device: str
    unit: str
    adapter: str
    runtime: str
    unit_obj: object
    # Why a figure measured here would not be this device's (None: the device is here).
    absent: str | None = None
    profile_obj: object = None

    @property
    def label(self) -> str:
        return f"{self.device}:{self.unit}"


class Targets(list):
    """The targets, plus what the user should be told about how their names resolved."""

    notes: list[str]


def resolve_targets(devices: tuple[str, ...], runtimes: tuple[str, ...],
                    fmt: str | None = None) -> Targets:
    """Every adapter of the named devices (``ID`` or ``ID:UNIT``) for the given runtimes.

    ``fmt`` keeps only adapters that load that model format. A unit no current runtime
    supports (the Myriad X VPU) is an error that says why and what last ran it.
    """
    from edgeopt.runtimes import get_adapter, load_devices
    from edgeopt.runtimes.devices import absent_reason

    catalog = load_devices()
    targets = Targets()
    targets.notes = []
    for name in devices:
        profile, unit, note = catalog.resolve_with_note(name)
        units = [unit] if ":" in name else list(profile.units)
        if note and unit.supported:
            targets.notes.append(note)
        unsupported = [u for u in units if not u.supported]
        if unsupported and len(unsupported) == len(units):
            u = unsupported[0]
            msg = (f"{profile.id}:{u.id} cannot be benchmarked: {' '.join(u.note.split())}"
                   if u.note else f"{profile.id}:{u.id} is not supported by current runtimes")
            raise UsageError(msg)
        absent = absent_reason(profile)
        for u in units:
            if not u.supported:
                targets.notes.append(f"{profile.id}:{u.id} skipped: not supported by current "
                                     "runtimes")
                continue
            for adapter_name in u.adapters:
                adapter = get_adapter(adapter_name)
                if adapter.runtime not in runtimes:
                    continue
                if fmt is not None and fmt not in adapter.formats:
                    continue
                targets.append(Target(profile.id, u.id, adapter_name, adapter.runtime, u,
                                      absent, profile))
    if not targets:
        what = f"{fmt} models with " if fmt else ""
        msg = (f"no adapter runs {what}{' or '.join(runtimes)} on {', '.join(devices)}; "
               "see 'edgeopt devices show ID'")
        raise UsageError(msg)
    return targets
