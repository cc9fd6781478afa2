"""devices.yaml: host detection, one-pass validation with key paths, lookups."""

from __future__ import annotations

import pytest

from edgeopt.runtimes import InvalidDeviceProfiles, UnknownDevice, load_devices
from edgeopt.runtimes.devices import detect_host


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
