"""devices.yaml: host detection, one-pass validation with key paths, lookups."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgeopt.runtimes import InvalidDeviceProfiles, UnknownDevice, load_devices
from edgeopt.runtimes.devices import (
    ADAPTER_RULES,
    ARM_ISA,
    FACT_KEYS,
    QEMU_AARCH64_CPUS,
    detect_host,
)


def test_host_cpu_is_filled_from_this_machine():
    host = detect_host()
    assert host["cores"] >= 1
    assert host["memory_gb"] and host["memory_gb"] > 0
    profile = load_devices().get("host-cpu")
    cpu = profile.units[0]
    assert profile.host and cpu.kind == "cpu"
    assert cpu.cores == host["cores"]
    assert cpu.isa == host["isa"]
    assert profile.name == host["name"]
    flags = open("/proc/cpuinfo").read()
    assert ("avx2" in cpu.isa) == (" avx2" in flags)


def test_every_problem_is_reported_with_its_key_path(tmp_path):
    bad = tmp_path / "devices.yaml"
    bad.write_text(
        "schema_version: 1\n"
        "devices:\n"
        "  rpi5:\n"
        "    name: Raspberry Pi 5\n"
        "    colour: red\n"
        "    units:\n"
        "      - id: cpu\n"
        "        kind: cpu\n"
        "        adapters: [ort-cpu]\n"
        "        precisions: [fp32, int3]\n"
        "        cores: -4\n"
        "      - id: cpu\n"
        "        kind: gpu\n"
        "        adapters: [ort-cpu]\n"
        "        precisions: [fp32]\n"
        "  broken:\n"
        "    units: []\n"
    )
    with pytest.raises(InvalidDeviceProfiles) as info:
        load_devices(bad)
    text = str(info.value)
    problems = info.value.problems
    assert "rpi5.units[0].precisions[1]: 'int3' is not one of fp32, fp16, int8" in text
    assert "rpi5.colour: unknown key" in text
    assert "rpi5.units[0].cores: -4 is not a positive integer" in text
    assert "rpi5.units[1].kind: 'gpu' is not one of cpu, igpu, npu, vpu" in text
    assert "broken.name: missing" in text
    assert "broken.units: expected a non-empty list" in text
    assert len(problems) == 6, problems
    assert text.startswith("devices.yaml: 6 problems")


def test_duplicate_unit_and_yaml_syntax(tmp_path):
    bad = tmp_path / "devices.yaml"
    bad.write_text("schema_version: 1\ndevices:\n  x:\n    name: [unclosed\n")
    with pytest.raises(InvalidDeviceProfiles, match=r"line \d+: not valid YAML"):
        load_devices(bad)
    bad.write_text(
        "schema_version: 1\ndevices:\n  x:\n    name: X\n    units:\n"
        "      - {id: cpu, kind: cpu, adapters: [ort-cpu], precisions: [fp32]}\n"
        "      - {id: cpu, kind: cpu, adapters: [ov-cpu], precisions: [fp32]}\n"
    )
    with pytest.raises(InvalidDeviceProfiles, match=r"x.units\[1\].id: duplicate unit id 'cpu'"):
        load_devices(bad)


def test_unknown_device_and_unit_messages():
    catalog = load_devices()
    with pytest.raises(UnknownDevice, match=r"unknown device 'host-gpu'; did you mean 'host-cpu'\?"):
        catalog.get("host-gpu")
    with pytest.raises(UnknownDevice, match=r"^unknown device 'zzzzzz' \(edgeopt devices list\)$"):
        catalog.get("zzzzzz")
    profile, unit = catalog.resolve("host-cpu:cpu")
    assert (profile.id, unit.id) == ("host-cpu", "cpu")
    with pytest.raises(UnknownDevice, match=r"device 'host-cpu' has no unit 'npu' \(its units: cpu\)"):
        catalog.resolve("host-cpu:npu")


def test_environment_variable_points_at_another_file(tmp_path, monkeypatch):
    other = tmp_path / "mine.yaml"
    other.write_text(
        "schema_version: 1\ndevices:\n  lab-box:\n    name: Lab box\n    units:\n"
        "      - {id: cpu, kind: cpu, adapters: [ort-cpu], precisions: [fp32, int8], "
        "cores: 8, peak_gops: {int8: {value: 512, source: 'datasheet'}}}\n"
    )
    monkeypatch.setenv("EDGEOPT_DEVICES", str(other))
    catalog = load_devices()
    assert catalog.ids() == ["lab-box"]
    unit = catalog.get("lab-box").units[0]
    assert unit.cores == 8 and unit.peak_gops["int8"].value == 512.0


# ---------------------------------------------------------------------------- shipped profiles

def _shipped_units():
    catalog = load_devices()
    for device_id in catalog.ids():
        profile = catalog.get(device_id)
        for unit in profile.units:
            yield profile, unit


def test_every_shipped_profile_loads_and_there_are_at_least_eight_real_devices():
    catalog = load_devices()
    ids = catalog.ids()
    assert ids[0] == "host-cpu" and catalog.get("host-cpu").host
    real = [i for i in ids if not catalog.get(i).host]
    assert len(real) >= 8, real
    for device_id in ("core-ultra-7-258v", "core-i7-1185g7", "ncs2", "rpi4", "rpi5",
                      "snapdragon-8-gen-2", "jetson-orin-nano", "apple-m2"):
        assert device_id in real
    for device_id in real:
        profile = catalog.get(device_id)
        assert profile.name and profile.vendor and profile.source, device_id


def test_every_figure_and_fact_has_a_source():
    for profile, unit in _shipped_units():
        where = f"{profile.id}:{unit.id}"
        figures = dict(unit.peak_gops)
        if unit.bandwidth_gbs is not None:
            figures["bandwidth_gbs"] = unit.bandwidth_gbs
        for name, figure in figures.items():
            assert figure.value > 0, (where, name)
            assert figure.source.strip(), (where, name)
        if profile.host:
            continue
        assert unit.bandwidth_gbs is not None or not unit.supported, where
        assert unit.peak_gops, where
        facts = [k for k in FACT_KEYS if getattr(unit, k) not in (None, ())]
        assert not facts or (unit.source and unit.source.strip()), (where, facts)
        if unit.clusters and unit.cores:
            assert sum(c.count for c in unit.clusters) == unit.cores, where


def test_derived_figures_show_their_arithmetic():
    for profile, unit in _shipped_units():
        figures = {**unit.peak_gops, "bandwidth_gbs": unit.bandwidth_gbs}
        for name, figure in figures.items():
            if figure is not None and figure.source.startswith("derived"):
                arithmetic = any(op in figure.source for op in (" x ", " / ", " + "))
                assert arithmetic and "=" in figure.source, (profile.id, unit.id, name)


def test_soc_memory_is_marked_shared():
    for profile, unit in _shipped_units():
        if not profile.host and unit.memory_gb is not None and unit.kind != "vpu":
            assert unit.memory_shared, (profile.id, unit.id)


def test_arm_units_name_a_qemu_core_and_only_arm_adapters():
    arm = [(p, u) for p, u in _shipped_units() if u.arch == "aarch64"]
    assert {p.id for p, _ in arm} >= {"rpi4", "rpi5", "snapdragon-8-gen-2",
                                      "jetson-orin-nano", "apple-m2"}
    for profile, unit in arm:
        assert unit.qemu_cpu, profile.id
        assert unit.qemu_cpu.split(",")[0] in QEMU_AARCH64_CPUS, (profile.id, unit.qemu_cpu)
        assert unit.qemu_cpu_note, profile.id
        assert set(unit.adapters) <= {"ort-arm", "ov-arm"}, profile.id
        assert set(unit.isa) <= set(ARM_ISA), profile.id
    assert dict((p.id, u.qemu_cpu) for p, u in arm)["rpi5"] == "cortex-a76"
    assert dict((p.id, u.qemu_cpu) for p, u in arm)["rpi4"] == "cortex-a72"


def test_adapters_match_unit_kinds():
    for profile, unit in _shipped_units():
        for name in unit.adapters:
            kinds, arch = ADAPTER_RULES[name]
            assert unit.kind in kinds, (profile.id, unit.id, name)
            if unit.arch:
                assert arch == unit.arch, (profile.id, unit.id, name)


def test_ncs2_is_listed_but_marked_unsupported_with_the_reason():
    catalog = load_devices()
    profile = catalog.get("ncs2")
    unit = profile.units[0]
    assert unit.kind == "vpu" and not unit.supported and not profile.supported
    assert unit.adapters == ()
    assert "2023.0" in unit.unsupported_since
    assert "2022.3" in unit.last_supported_release
    assert "MYRIAD" in unit.note
    _, resolved, note = catalog.resolve_with_note("ncs2")
    assert resolved is unit
    assert note.startswith("ncs2:vpu is not supported") and "2022.3" in note
    catalog.resolve("ncs2:vpu")
    assert any("ncs2:vpu is not supported" in n for n in catalog.notes)


def test_vpu_alias_resolves_to_the_npu_unit_with_a_note():
    catalog = load_devices()
    profile, unit = catalog.resolve("core-ultra-7-258v:vpu")
    assert (profile.id, unit.id, unit.kind) == ("core-ultra-7-258v", "npu", "npu")
    assert any("MYRIAD" in n and "2023.0" in n for n in catalog.notes)
    _, same, note = catalog.resolve_with_note("core-ultra-7-258v:vpu")
    assert same is unit and "'core-ultra-7-258v:vpu' is core-ultra-7-258v:npu" in note
    _, _, none = catalog.resolve_with_note("core-ultra-7-258v:npu")
    assert none is None
    with pytest.raises(UnknownDevice, match=r"device 'rpi5' has no unit 'vpu' \(its units: cpu\)"):
        catalog.resolve("rpi5:vpu")


# ---------------------------------------------------------------------------- schema rules

def _load_text(tmp_path, text):
    path = tmp_path / "devices.yaml"
    path.write_text("schema_version: 1\ndevices:\n" + text)
    return load_devices(path)


def test_new_rules_report_every_problem_with_its_key_path(tmp_path):
    with pytest.raises(InvalidDeviceProfiles) as info:
        _load_text(tmp_path, """\
  rpi5:
    name: Raspberry Pi 5
    units:
      - id: cpu
        kind: cpu
        adapters: [ort-arm, ort-cpu]
        precisions: [fp32, int8]
        cores: 4
        clusters: [{core: Cortex-A76, count: 2, clock_ghz: 2.4}]
        isa: [asimd, avx2, neon]
        qemu_cpu: cortex-a78ae
        peak_gops:
          int8: {value: x, source: derived}
          fp32: {value: 153.6, source: ''}
        bandwidth_gbs: {value: -1, source: product brief}
  jetson:
    name: Jetson
    units:
      - {id: cpu, kind: cpu, arch: aarch64, adapters: [ort-arm], precisions: [fp32]}
      - {id: gpu, kind: igpu, adapters: [ov-npu], precisions: [fp16]}
  stick:
    name: Stick
    units:
      - {id: vpu, kind: vpu, adapters: [], precisions: [fp16], supported: false}
      - {id: x, kind: npu, adapters: [], precisions: [fp16], qemu_cpu: cortex-a76}
""")
    problems = info.value.problems
    expected = [
        "rpi5.units[0].adapters[1]: 'ort-cpu' is an x86_64 adapter but this unit is aarch64 "
        "(use ort-arm, ov-arm)",
        "rpi5.units[0].qemu_cpu: 'cortex-a78ae' is not an aarch64 CPU model of qemu 10.0",
        "rpi5.units[0].isa[1]: 'avx2' is not an aarch64 flag",
        "rpi5.units[0].isa[2]: 'neon' is not one of",
        "rpi5.units[0].clusters: counts add up to 2, not cores (4)",
        "rpi5.units[0].peak_gops.int8.value: 'x' is not a number",
        "rpi5.units[0].peak_gops.fp32.source: empty",
        "rpi5.units[0].bandwidth_gbs.value: -1 is not a positive number",
        "jetson.units[0].qemu_cpu: missing (an aarch64 cpu unit names the core qemu emulates",
        "jetson.units[1].adapters[0]: 'ov-npu' runs on npu/vpu units, not igpu",
        "stick.units[0].note: missing",
        "stick.units[1].qemu_cpu: only aarch64 units are emulated with qemu",
        "stick.units[1].adapters: empty (only a unit marked 'supported: false'",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)
    assert len(problems) == len(expected), problems
    assert str(info.value).startswith(f"devices.yaml: {len(expected)} problems")


def test_qemu_cpu_takes_options_and_suggests_a_close_model(tmp_path):
    catalog = _load_text(tmp_path, """\
  m2:
    name: M2
    units:
      - {id: cpu, kind: cpu, adapters: [ov-arm], precisions: [fp32],
         qemu_cpu: 'neoverse-v1,sve=off'}
""")
    unit = catalog.get("m2").units[0]
    assert unit.arch == "aarch64" and unit.qemu_cpu == "neoverse-v1,sve=off"
    with pytest.raises(InvalidDeviceProfiles, match=r"did you mean 'cortex-a76'\?") as info:
        _load_text(tmp_path, """\
  p:
    name: P
    units:
      - {id: cpu, kind: cpu, adapters: [ort-arm], precisions: [fp32], qemu_cpu: 'cortex-a67,sve'}
""")
    assert "p.units[0].qemu_cpu: option 'sve' is not prop=value" in str(info.value)


def test_adapter_alias_is_accepted_in_a_profile(tmp_path):
    catalog = _load_text(tmp_path, """\
  laptop:
    name: Laptop
    units:
      - {id: npu, kind: npu, adapters: [ov-vpu], precisions: [int8]}
""")
    assert catalog.get("laptop").units[0].adapters == ("ov-vpu",)


def test_old_style_units_still_load(tmp_path):
    """Units written before sources, clusters and arch existed keep loading."""
    catalog = _load_text(tmp_path, """\
  box:
    name: Box
    units:
      - {id: cpu, kind: cpu, adapters: [ort-cpu], precisions: [fp32], cores: 8, clock_ghz: 3.0,
         isa: [avx2], memory_gb: 16, bandwidth_gbs: {value: 50, source: datasheet}}
""")
    unit = catalog.get("box").units[0]
    assert unit.source is None and unit.clusters == () and unit.supported
    assert unit.arch == "x86_64" and unit.bandwidth_gbs.value == 50.0


def _qemu_aarch64() -> str | None:
    cache = Path(os.environ.get("EDGEOPT_CACHE_DIR") or Path.home() / ".cache" / "edgeopt")
    built = cache / "arm64-sysroot" / "opt" / "edgeopt-emulation" / "qemu-aarch64"
    return str(built) if built.is_file() else shutil.which("qemu-aarch64")


def test_known_qemu_models_are_what_qemu_10_lists():
    qemu = _qemu_aarch64()
    if qemu is None:
        pytest.skip("no qemu-aarch64 here (edgeopt bench --emulate builds one)")
    version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout
    if "version 10.0." not in version:
        pytest.skip(f"qemu-aarch64 here is not 10.0: {version.splitlines()[0]}")
    listed = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True).stdout
    assert set(listed.split()) - {"Available", "CPUs:"} == set(QEMU_AARCH64_CPUS)


def test_a_profile_is_this_machine_only_when_its_match_fits():
    from edgeopt.runtimes.devices import absent_reason

    catalog = load_devices()
    rpi5 = catalog.get("rpi5")
    assert absent_reason(rpi5, "Cortex-A76 | Raspberry Pi 5 Model B Rev 1.0") is None
    reason = absent_reason(rpi5, "AMD EPYC 7B13")
    assert reason == "this machine is AMD EPYC 7B13, not " + rpi5.name
    assert absent_reason(catalog.get("host-cpu"), "anything") is None
    # Same ISA as this x86 host is not enough: an x86 profile is not this machine either.
    assert absent_reason(catalog.get("core-ultra-7-258v"), "AMD EPYC 7B13") is not None


def test_every_shipped_profile_but_the_host_can_recognise_its_machine():
    catalog = load_devices()
    for device_id in catalog.ids():
        profile = catalog.get(device_id)
        if profile.host or not profile.supported:
            continue
        assert profile.match, device_id
