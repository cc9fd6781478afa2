"""Each adapter in the registry against the contract, and the registry's own rules."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeopt.runtimes import ADAPTERS, AdapterUnavailable, get_adapter, load_devices
from edgeopt.runtimes.errors import UnknownAdapter

from contract import AdapterContract


class TestOrtCpu(AdapterContract):
    adapter_name = "ort-cpu"


class TestOvCpu(AdapterContract):
    adapter_name = "ov-cpu"

    def test_fp32_runs_in_f32_not_bf16(self, adapter, tiny_onnx):
        loaded = adapter.load(tiny_onnx)
        assert loaded.info["inference_precision"] == "f32"

    def test_ir_without_bin(self, adapter, tmp_path):
        xml = tmp_path / "m.xml"
        xml.write_text("<net/>")
        with pytest.raises(Exception, match=r"m.xml has no m.bin beside it"):
            adapter.load(xml)


class TestOvGpu(AdapterContract):
    adapter_name = "ov-gpu"


class TestOvNpu(AdapterContract):
    adapter_name = "ov-npu"


class TestOvArm(AdapterContract):
    adapter_name = "ov-arm"


class TestOrtArm(AdapterContract):
    adapter_name = "ort-arm"


class TestOrtOpenVino(AdapterContract):
    adapter_name = "ort-openvino"


CONTRACT_CLASSES = {c.adapter_name for c in (TestOrtCpu, TestOvCpu, TestOvGpu, TestOvNpu,
                                             TestOvArm, TestOrtArm, TestOrtOpenVino)}


def test_every_registered_adapter_has_a_contract_test():
    assert set(ADAPTERS) == CONTRACT_CLASSES


def test_every_profile_names_known_adapters():
    catalog = load_devices()
    for device_id in catalog.ids():
        for unit in catalog.get(device_id).units:
            assert set(unit.adapters) <= set(ADAPTERS), (device_id, unit.id)


def test_unknown_adapter_name():
    with pytest.raises(UnknownAdapter, match="unknown adapter 'ort-tpu'"):
        get_adapter("ort-tpu")


def test_missing_execution_provider_is_reported_not_benchmarked_on_cpu(tiny_onnx):
    """ONNX Runtime silently falls back to the CPU EP; the adapter must not."""
    from edgeopt.runtimes.ort_cpu import OrtSessionAdapter

    class OrtOpenVinoGpu(OrtSessionAdapter):
        name = "ort-openvino-test"
        provider = "OpenVINOExecutionProvider"

    adapter = OrtOpenVinoGpu()
    availability = adapter.available()
    assert not availability.ok
    assert "OpenVINOExecutionProvider is not in this onnxruntime build" in availability.reason
    with pytest.raises(AdapterUnavailable):
        adapter.load(tiny_onnx)


def test_provider_check_catches_a_silent_fallback(tiny_onnx):
    import onnxruntime as ort

    from edgeopt.runtimes.ort_cpu import check_providers

    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    check_providers(session, "CPUExecutionProvider")
    with pytest.raises(AdapterUnavailable, match="did not start CUDAExecutionProvider"):
        check_providers(session, "CUDAExecutionProvider")


def test_runtimes_import_without_torch_or_nncf():
    code = (
        "import sys\n"
        "import edgeopt.runtimes as r\n"
        "c = r.load_devices(); c.resolve('host-cpu:cpu')\n"
        "[r.get_adapter(n).available() for n in r.ADAPTERS]\n"
        "import edgeopt._bench_cli, edgeopt._devices_cli\n"
        "bad = [m for m in ('torch', 'nncf') if m in sys.modules]\n"
        "print(','.join(bad) or 'clean')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_peak_memory_is_the_benchmark_process_not_its_parent(tiny_onnx):
    """ru_maxrss survives exec on Linux; the worker must report its own peak."""
    import numpy as np

    from contract import TINY_PROTOCOL

    ballast = np.ones(600 * 1024 * 1024 // 8)  # 600 MB held by this (parent) process
    result = get_adapter("ort-cpu").benchmark(
        tiny_onnx, {"input": np.zeros((1, 3, 8, 8), dtype=np.float32)}, TINY_PROTOCOL)
    assert ballast.sum() > 0
    assert 0 < result.peak_rss_mb < 500


def test_vpu_is_an_alias_of_the_npu_adapter():
    from edgeopt.runtimes import ADAPTER_ALIASES

    assert get_adapter("ov-vpu").name == "ov-npu"
    assert "2023.0" in ADAPTER_ALIASES["ov-vpu"][1]


def test_arm_adapters_need_an_arm_machine(monkeypatch):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    for name in ("ort-arm", "ov-arm"):
        availability = get_adapter(name).available()
        assert not availability.ok
        assert "ARM CPU" in availability.reason and "x86_64" in availability.reason
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    # On ARM the gate opens and the runtime's own check decides (here: the runtime is
    # installed, so usable).
    assert get_adapter("ort-arm").available().ok


def test_ort_openvino_absent_from_this_build_says_which_package_has_it():
    import onnxruntime as ort

    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime is the onnxruntime-openvino build")
    availability = get_adapter("ort-openvino").available()
    assert not availability.ok
    assert "OpenVINOExecutionProvider is not in this onnxruntime build" in availability.reason
    assert "onnxruntime-openvino" in availability.reason


def test_ort_openvino_device_type_follows_the_unit_kind():
    from types import SimpleNamespace

    adapter = get_adapter("ort-openvino")
    assert adapter.provider_options(SimpleNamespace(kind="igpu")) == {"device_type": "GPU"}
    assert adapter.provider_options(SimpleNamespace(kind="npu")) == {"device_type": "NPU"}
    assert adapter.provider_options(None) == {"device_type": "CPU"}


def test_ov_gpu_absent_names_the_missing_piece():
    availability = get_adapter("ov-gpu").available()
    if availability.ok:
        pytest.skip("a GPU is present")
    assert "GPU" in availability.reason
    assert "Exception from" not in availability.reason       # OpenVINO's source location


def test_npu_refuses_dynamic_shapes_naming_every_dynamic_input(tmp_path):
    from onnx import helper

    from edgeopt.runtimes.errors import StaticShapesRequired

    from tiny_models import _save

    nodes = [helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    model = tmp_path / "dyn.onnx"
    _save(model, "dyn", nodes, [], ("y", ["batch", 4]),
          inputs=[("a", ["batch", 4]), ("b", ["batch", 4])])
    npu = get_adapter("ov-npu")
    with pytest.raises(StaticShapesRequired) as info:
        npu.check_static_shapes(model)
    message = str(info.value)
    assert "a [?,4]" in message and "b [?,4]" in message and "--input-shape" in message
    npu.check_static_shapes(model, {"a": (1, 4), "b": (1, 4)})   # fixed: accepted
    get_adapter("ov-cpu").check_static_shapes(model)             # the CPU takes dynamic


def test_ov_lists_every_operation_the_device_cannot_run(tiny_onnx, monkeypatch):
    """query_model's answer is turned into the full list, not the first op."""
    import openvino as ov

    adapter = get_adapter("ov-cpu")
    assert adapter.unsupported_ops(tiny_onnx) == []
    real = ov.Core.query_model

    def without_convolutions(self, model, device, *args):
        supported = real(self, model, device, *args)
        return {k: v for k, v in supported.items()
                if model.get_ops() and not any(op.get_friendly_name() == k and
                                               op.get_type_name() in {"Convolution", "Relu"}
                                               for op in model.get_ops())}

    monkeypatch.setattr(ov.Core, "query_model", without_convolutions)
    missing = adapter.unsupported_ops(tiny_onnx)
    assert len(missing) == 2
    assert any("(Convolution)" in m for m in missing) and any("(Relu)" in m for m in missing)


def test_ort_node_assignment_on_the_cpu_ep(tiny_onnx):
    from edgeopt.runtimes.ort_cpu import OrtCpu

    assignment = OrtCpu().node_assignment(tiny_onnx)
    assert assignment
    assert {provider for _, provider in assignment.values()} == {"CPUExecutionProvider"}
    assert OrtCpu().unsupported_ops(tiny_onnx) == []


def test_an_ep_that_takes_no_node_is_unavailable_not_a_cpu_figure(tiny_onnx):
    """AzureExecutionProvider is in this build and starts, but claims no node of a local
    model: ONNX Runtime runs them all on the CPU EP and lists both providers. The session
    check alone would pass; the node assignment catches it."""
    import onnxruntime as ort

    from edgeopt.runtimes.ort_cpu import OrtSessionAdapter

    if "AzureExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no AzureExecutionProvider")

    class OrtAzure(OrtSessionAdapter):
        name = "ort-azure-test"
        provider = "AzureExecutionProvider"

    with pytest.raises(AdapterUnavailable, match=r"ran none of tiny.onnx's \d+ nodes on "
                                                 r"AzureExecutionProvider"):
        OrtAzure().unsupported_ops(tiny_onnx)
