"""The Ray executor: a measured benchmark holds its physical device, so two on one device
never overlap, while benchmarks on two devices do run side by side; builds start as
workers free up, and their results come back in trial order."""

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


def test_builds_start_as_workers_free_up_and_come_back_in_trial_order():
    import time

    from edgeopt.search.executors import RayExecutor

    def fake_build(job):            # trial 0 is long, the others short
        start = time.time()
        time.sleep(job["seconds"])
        return {"number": job["number"], "status": "ok", "start": start, "end": time.time()}

    executor = RayExecutor(build_fn=fake_build)
    try:
        if executor.workers < 2:
            pytest.skip("needs 2 cores")
        for number, seconds in enumerate([4.0, 0.3, 0.3, 0.3]):
            executor.submit({"number": number, "seconds": seconds})
        first = executor.result(0)
        assert executor.building() is False      # 1, 2 and 3 ended while 0 ran
        rest = [executor.result(n) for n in (1, 2, 3)]
        executor.submit({"number": 4, "seconds": 0.5})
        assert executor.building() is True
        executor.drain()                          # e.g. before a measured benchmark
        assert executor.building() is False
        last = executor.result(4)
    finally:
        executor.close()
    assert [r["number"] for r in [first, *rest, last]] == [0, 1, 2, 3, 4]
    # no batch waits for its longest: 2 and 3 ran on the other worker while 0 did
    assert rest[1]["start"] < first["end"] and rest[2]["start"] < first["end"]
