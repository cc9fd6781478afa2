"""`edgeopt bench` on devices that are not here, and `edgeopt devices list`: no figure for
a device that did not run, every figure labelled."""

from __future__ import annotations

import json

import pytest

LAPTOP = """
schema_version: 1
devices:
  host-cpu:
    name: host
    host: true
    units:
      - {id: cpu, kind: cpu, adapters: [ort-cpu, ov-cpu], precisions: [fp32, int8]}
  laptop:
    name: a laptop with an Intel iGPU and NPU
    units:
      - id: igpu
        kind: igpu
        adapters: [ov-gpu, ort-openvino]
        precisions: [fp32, fp16, int8]
        peak_gops:
          fp32: {value: 2000, source: test}
          fp16: {value: 4000, source: test}
          int8: {value: 8000, source: test}
        bandwidth_gbs: {value: 60, source: test}
      - id: npu
        kind: npu
        adapters: [ov-npu]
        precisions: [fp16, int8]
"""


@pytest.fixture
def laptop(tmp_path, monkeypatch):
    path = tmp_path / "devices.yaml"
    path.write_text(LAPTOP)
    monkeypatch.setenv("EDGEOPT_DEVICES", str(path))
    return path


def _figures(obj) -> list:
    """Every latency figure anywhere in a JSON document."""
    if isinstance(obj, dict):
        found = [v for k, v in obj.items() if k.endswith("_ms") and v is not None]
        return found + [f for v in obj.values() for f in _figures(v)]
    if isinstance(obj, list):
        return [f for v in obj for f in _figures(v)]
    return []


def test_absent_igpu_with_require_measured_exits_non_zero_without_a_figure(
        run_cli, laptop, tiny_onnx):
    from edgeopt.runtimes import get_adapter

    if get_adapter("ov-gpu").available().ok:
        pytest.skip("an Intel GPU is present here")
    result = run_cli("bench", tiny_onnx, "--device", "laptop:igpu", "--require-measured",
                     "--json", "--quiet")
    assert result.code == 2
    rows = json.loads(result.out)
    assert {r["adapter"] for r in rows} == {"ov-gpu", "ort-openvino"}
    assert all(r["bench"]["label"] == "unavailable" for r in rows)
    assert _figures(rows) == []
    assert "--require-measured: laptop:igpu via ov-gpu cannot be measured here" in result.err
    assert "GPU" in result.err


def test_absent_igpu_says_why_and_never_labels_a_figure_measured(run_cli, laptop, tiny_onnx):
    result = run_cli("bench", tiny_onnx, "--device", "laptop:igpu", "--json")
    rows = json.loads(result.out)
    for row in rows:
        assert row["unavailable"]                              # the reason, kept in the row
        assert row["bench"]["label"] in {"estimated", "unavailable"}
        assert "not present here" in result.err


def test_measured_and_absent_devices_side_by_side(run_cli, laptop, tiny_onnx):
    result = run_cli("bench", tiny_onnx, "--device", "host-cpu", "--device", "laptop:npu",
                     "--runtime", "openvino", "--bench-iterations", "3", "--bench-seconds", "0",
                     "--bench-repeats", "1", "--warmup", "0", "--json", "--quiet")
    assert result.code == 0
    labels = {r["device"]: r["bench"]["label"] for r in json.loads(result.out)}
    assert labels["host-cpu:cpu"] == "measured"
    assert labels["laptop:npu"] != "measured"


def test_devices_list_json_shows_units_kinds_and_usability(run_cli, laptop):
    result = run_cli("devices", "list", "--json")
    assert result.code == 0
    profiles = {p["id"]: p for p in json.loads(result.out)}
    units = {u["id"]: u for u in profiles["laptop"]["units"]}
    assert units["igpu"]["kind"] == "igpu" and units["npu"]["kind"] == "npu"
    status = {s["adapter"]: s for s in units["npu"]["adapter_status"]}
    assert status["ov-npu"]["usable_here"] in {True, False}
    if not status["ov-npu"]["usable_here"]:
        assert "NPU" in status["ov-npu"]["reason"]
    host = {s["adapter"]: s for s in profiles["host-cpu"]["units"][0]["adapter_status"]}
    assert host["ort-cpu"]["usable_here"] is True


def test_malformed_profiles_are_reported_with_every_key_path(run_cli, tmp_path, monkeypatch):
    path = tmp_path / "devices.yaml"
    path.write_text(LAPTOP.replace("kind: igpu", "kind: gpu").replace("value: 60", "value: x")
                    .replace("adapters: [ov-npu]", "adapters: [ov-tpu]"))
    monkeypatch.setenv("EDGEOPT_DEVICES", str(path))
    result = run_cli("devices", "list")
    assert result.code == 2
    for where in ("laptop.units[0].kind", "laptop.units[0].bandwidth_gbs.value",
                  "laptop.units[1].adapters[0]"):
        assert where in result.err


def test_optimize_require_measured_refuses_before_any_work(run_cli, laptop, tmp_path):
    from edgeopt.runtimes import get_adapter

    if get_adapter("ov-npu").available().ok:
        pytest.skip("an Intel NPU is present here")
    out = tmp_path / "out"
    result = run_cli("optimize", "ref:digits-cnn", "--device", "laptop:npu",
                     "--runtime", "openvino", "--require-measured", "--out", out, "--quiet")
    assert result.code == 2
    assert "--require-measured: laptop:npu via ov-npu cannot be measured here" in result.err
    assert not out.exists()


def test_an_x86_profile_that_is_not_this_machine_is_estimated_not_measured(run_cli, tiny_onnx):
    """ort-cpu runs here, but this machine is not a Core Ultra: no "measured" figure."""
    result = run_cli("bench", tiny_onnx, "--device", "core-ultra-7-258v:cpu", "--runtime",
                     "onnxruntime", "--json", "--quiet")
    rows = json.loads(result.out)
    cpu = [r for r in rows if r["adapter"] == "ort-cpu"]
    assert cpu and cpu[0]["bench"]["label"] != "measured"
    assert "not Intel Core Ultra 7 258V" in cpu[0]["unavailable"]
