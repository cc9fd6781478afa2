"""The Ray executor: a measured benchmark holds its physical device, so two on one device
never overlap, while benchmarks on two devices do run side by side."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")


def _intervals(results, device):
    return sorted((r["start"], r["end"]) for r in results if r["device"] == device)


def test_two_measured_benchmarks_on_one_device_never_overlap(tmp_path):
    import time

    from edgeopt.search.executors import RayExecutor

    def fake_benchmark(job):        # a benchmark's shape: holds the device for a while
        start = time.time()
        time.sleep(1.0)
        return {"device": job["device"], "start": start, "end": time.time(),
                "label": "measured", "p50_ms": 1.0}

    executor = RayExecutor(devices=("host-cpu", "rpi5"), measure_fn=fake_benchmark)
    try:
        jobs = [{"device": "host-cpu:cpu"}] * 3 + [{"device": "rpi5:cpu"}] * 3
        results = executor.measure(jobs)
    finally:
        executor.close()
    for device in ("host-cpu:cpu", "rpi5:cpu"):
        spans = _intervals(results, device)
        assert len(spans) == 3
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"two benchmarks overlapped on {device}: {spans}"
    # The resource is per device, not a global lock: the two devices' benchmarks overlap.
    host, board = _intervals(results, "host-cpu:cpu"), _intervals(results, "rpi5:cpu")
    assert any(a < d and c < b for a, b in host for c, d in board)
