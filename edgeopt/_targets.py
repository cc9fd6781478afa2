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

    @property
    def label(self) -> str:
        return f"{self.device}:{self.unit}"


def resolve_targets(devices: tuple[str, ...], runtimes: tuple[str, ...],
                    fmt: str | None = None) -> list[Target]:
    """Every adapter of the named devices (``ID`` or ``ID:UNIT``) for the given runtimes.

    ``fmt`` keeps only adapters that load that model format.
    """
    from edgeopt.runtimes import get_adapter, load_devices

    catalog = load_devices()
    targets = []
    for name in devices:
        profile, unit = catalog.resolve(name)
        units = [unit] if ":" in name else list(profile.units)
        for u in units:
            for adapter_name in u.adapters:
                adapter = get_adapter(adapter_name)
                if adapter.runtime not in runtimes:
                    continue
                if fmt is not None and fmt not in adapter.formats:
                    continue
                targets.append(Target(profile.id, u.id, adapter_name, adapter.runtime, u))
    if not targets:
        what = f"{fmt} models with " if fmt else ""
        msg = (f"no adapter runs {what}{' or '.join(runtimes)} on {', '.join(devices)}; "
               "see 'edgeopt devices show ID'")
        raise UsageError(msg)
    return targets
