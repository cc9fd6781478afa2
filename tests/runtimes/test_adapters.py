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


CONTRACT_CLASSES = {TestOrtCpu.adapter_name, TestOvCpu.adapter_name}


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
