"""Many samples at once (runtimes/_many.py) and the passes that use it (edgeopt/_outputs.py):
outputs in sample order, a bounded number in flight, one at a time where a model has no
``run_many``. The adapters' own ``run_many`` against ``run``: tests/runtimes/contract.py."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgeopt._outputs import each_output, run_all, run_spilled
from edgeopt.runtimes import _many, get_adapter


class Counted:
    """Samples that count how many were read, and a run that records the most samples
    read but not yet handed back to the caller."""

    def __init__(self, n: int) -> None:
        self.items = [{"x": np.full((2,), i, dtype=np.float32)} for i in range(n)]
        self.read = 0
        self.returned = 0
        self.most_ahead = 0
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        for item in self.items:
            self.read += 1
            self.most_ahead = max(self.most_ahead, self.read - self.returned)
            yield item

    def run(self, feeds):
        # later samples finish first: the order must come from the sample, not the clock
        time.sleep(0.002 * (3 - int(feeds["x"][0]) % 4))
        return [feeds["x"] * 2]


def test_threaded_keeps_sample_order_and_a_bounded_number_in_flight():
    samples = Counted(40)
    got = []
    for outs in _many.threaded(samples.run, samples, 3):
        samples.returned += 1
        got.append(int(outs[0][0]))
    assert got == [2 * i for i in range(40)]
    assert samples.most_ahead <= 2 * 3 + 1


def test_a_model_without_run_many_runs_one_at_a_time_with_progress():
    class Plain:
        def __init__(self):
            self.calls = []

        def run(self, feeds):
            self.calls.append(int(feeds["x"][0]))
            return [feeds["x"] + 1]

    plain, seen = Plain(), []
    samples = Counted(5).items
    outs = run_all(plain, samples, lambda done, total: seen.append((done, total)))
    assert plain.calls == [0, 1, 2, 3, 4]
    assert [int(o[0][0]) for o in outs] == [1, 2, 3, 4, 5]
    assert seen == [(i, 5) for i in range(1, 6)]


def test_workers_follow_edgeopt_threads(monkeypatch):
    monkeypatch.setenv("EDGEOPT_THREADS", "3")
    assert _many.workers() == 3
    monkeypatch.setenv("EDGEOPT_THREADS", "many")             # not a count: the cores
    assert 1 <= _many.workers() <= (len(__import__("os").sched_getaffinity(0)))


@pytest.mark.parametrize("name", ["ort-cpu", "ov-cpu"])
def test_adapters_run_many_samples_at_once_and_stop_cleanly(name, tiny_onnx, monkeypatch):
    adapter = get_adapter(name)
    if not adapter.available().ok:
        pytest.skip(adapter.available().reason)
    monkeypatch.setenv("EDGEOPT_THREADS", "2")
    loaded = adapter.load(tiny_onnx)
    rng = np.random.default_rng(5)
    samples = [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
               for _ in range(_many.MANY_MIN + 3)]
    with monkeypatch.context() as wide:
        wide.setattr(_many, "one_at_a_time", None)         # the wide path, or a failure
        spilled = run_spilled(loaded, samples)
        first = each_output(loaded, samples)                 # left after two samples
        assert [next(first)[0].shape, next(first)[0].shape] == [(1, 4), (1, 4)]
        first.close()
    for feeds, outs in zip(samples, spilled, strict=True):
        np.testing.assert_array_equal(outs[0], loaded.run(feeds)[0])
    np.testing.assert_array_equal(run_all(loaded, samples[:3])[2][0],    # a parity check's
                                  loaded.run(samples[2])[0])
