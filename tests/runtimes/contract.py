"""The contract every runtime adapter passes; one subclass per adapter in the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeopt._outputs import run_spilled
from edgeopt.runtimes import (
    AdapterUnavailable,
    Availability,
    BenchProtocol,
    ModelLoadFailed,
    get_adapter,
)

TINY_PROTOCOL = BenchProtocol(warmup=1, min_iterations=5, min_seconds=0.0, repeats=2)


def tiny_reference(x: np.ndarray, path: Path) -> np.ndarray:
    """The tiny ONNX model's output computed with numpy, to check adapters against."""
    import onnx
    from onnx import numpy_helper

    w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((1, 8, 8, 8), dtype=np.float64)
    for i in range(8):
        for j in range(8):
            patch = padded[0, :, i:i + 3, j:j + 3]
            out[0, :, i, j] = np.tensordot(w["w"], patch, axes=([1, 2, 3], [0, 1, 2])) + w["b"]
    pooled = np.maximum(out, 0).mean(axis=(2, 3))
    return pooled @ w["fw"].T + w["fb"]


class AdapterContract:
    """Where the device is here: it loads, runs right and benchmarks. Where it is not: it
    says why in one line and refuses to load or benchmark (no figure for a device that did
    not run). Each test runs in whichever case this machine is."""

    adapter_name: str = ""

    @pytest.fixture
    def absent(self):
        adapter = get_adapter(self.adapter_name)
        availability = adapter.available()
        if availability.ok:
            pytest.skip(f"{self.adapter_name} is available here")
        return adapter, availability

    def test_absent_device_says_why_in_one_line(self, absent):
        _, availability = absent
        assert availability.reason
        assert "\n" not in availability.reason

    def test_absent_device_is_never_loaded_or_benchmarked(self, absent, tiny_onnx):
        adapter, availability = absent
        with pytest.raises(AdapterUnavailable) as info:
            adapter.load(tiny_onnx)
        assert availability.reason in str(info.value)
        x = np.zeros((1, 3, 8, 8), dtype=np.float32)
        with pytest.raises(AdapterUnavailable):
            adapter.benchmark(tiny_onnx, {"input": x}, TINY_PROTOCOL)

    @pytest.fixture
    def adapter(self):
        adapter = get_adapter(self.adapter_name)
        availability = adapter.available()
        assert isinstance(availability, Availability)
        if not availability.ok:
            pytest.skip(f"{self.adapter_name} unavailable here: {availability.reason}")
        return adapter

    def test_name_and_runtime(self, adapter):
        assert adapter.name == self.adapter_name
        assert adapter.runtime in {"onnxruntime", "openvino"}
        assert "onnx" in adapter.formats
        assert adapter.version()

    def test_load_and_run_matches_numpy(self, adapter, tiny_onnx):
        loaded = adapter.load(tiny_onnx)
        assert [s.name for s in loaded.inputs] == ["input"]
        assert tuple(loaded.inputs[0].shape) == (1, 3, 8, 8)
        x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
        out = loaded.run({"input": x})
        np.testing.assert_allclose(out[0], tiny_reference(x, tiny_onnx), rtol=1e-4, atol=1e-4)
        assert loaded.load_ms > 0

    def test_run_many_gives_run_s_outputs_in_sample_order(self, adapter, tiny_onnx,
                                                           monkeypatch):
        """The evaluation passes' path: a few samples in flight at once, each sample's
        outputs those of ``run`` bit for bit, in sample order, progress as they come."""
        monkeypatch.setenv("EDGEOPT_THREADS", "2")         # two at once, even on one core
        loaded = adapter.load(tiny_onnx)
        rng = np.random.default_rng(2)
        samples = [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
                   for _ in range(41)]
        one_by_one = [loaded.run(feeds) for feeds in samples]
        seen = []
        many = run_spilled(loaded, samples, lambda done, total: seen.append((done, total)))
        assert seen == [(i + 1, 41) for i in range(41)]
        assert len(many) == 41
        for alone, together in zip(one_by_one, many, strict=True):
            assert len(alone) == len(together)
            for a, b in zip(alone, together, strict=True):
                np.testing.assert_array_equal(a, b)

    def test_benchmark_fields(self, adapter, tiny_onnx):
        x = np.zeros((1, 3, 8, 8), dtype=np.float32)
        result = adapter.benchmark(tiny_onnx, {"input": x}, TINY_PROTOCOL)
        data = result.to_dict()
        assert data["label"] == "measured"
        assert data["iterations"] >= 2 * TINY_PROTOCOL.min_iterations
        assert data["min_ms"] <= data["p50_ms"] <= data["p90_ms"] <= data["p99_ms"] <= data["max_ms"]
        assert len(data["repeat_p50_ms"]) == 2
        assert data["peak_rss_mb"] > 0
        assert len(data["setup"]["model_sha256"]) == 64
        assert data["setup"]["runtime"] == adapter.runtime
        assert data["setup"]["inputs"] == {"input": {"shape": [1, 3, 8, 8], "dtype": "float32"}}

    def test_non_model_file_is_a_one_line_error(self, adapter, tmp_path):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"this is not a model" * 20)
        with pytest.raises(ModelLoadFailed) as info:
            adapter.load(bad)
        assert "bad.onnx" in str(info.value)
        assert "\n" not in str(info.value)

    def test_unsupported_ops_of_a_standard_model_is_empty(self, adapter, tiny_onnx):
        assert adapter.unsupported_ops(tiny_onnx) == []
