"""The adaptive benchmark stop, on a fake clock: properties, never the machine's timings."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.runtimes import BenchProtocol, InvalidProtocol
from edgeopt.runtimes.bench import STOP_REASONS, p50_ci95, summarize, timed_runs


class FakeClock:
    """A clock where each ``run()`` takes the next of ``durations_s`` (cycled)."""

    def __init__(self, durations_s) -> None:
        self.now, self.durations, self.i, self.runs = 0.0, list(durations_s), 0, 0

    def __call__(self) -> float:
        return self.now

    def run(self) -> None:
        self.now += self.durations[self.i % len(self.durations)]
        self.i += 1
        self.runs += 1


def test_a_steady_model_stops_on_the_interval_right_after_the_minimums():
    clock = FakeClock([0.004])
    protocol = BenchProtocol(min_iterations=50, min_seconds=1.0, max_seconds=10.0)
    times, stopped = timed_runs(clock.run, protocol, clock=clock)
    assert stopped == "ci"
    # the first run at which both minimums hold: 250 runs of 4 ms reach 1 s
    assert len(times) == max(50, int(np.ceil(1.0 / 0.004 - 1e-9)))
    assert clock.runs == len(times)


def test_the_minimum_count_is_respected_on_a_slow_model():
    clock = FakeClock([0.5])
    times, stopped = timed_runs(clock.run, BenchProtocol(min_iterations=7, min_seconds=1.0,
                                                               max_seconds=10.0),
                                clock=clock)
    assert stopped == "ci" and len(times) == 7


def test_a_model_that_cannot_converge_stops_at_the_time_cap():
    # half the runs take 1 ms, half 100 ms, at random: the median jumps between the two
    # modes, so its interval never gets within 2%
    rng = np.random.default_rng(0)
    clock = FakeClock(rng.choice([0.001, 0.100], size=10_000))
    protocol = BenchProtocol(min_iterations=50, min_seconds=1.0, max_seconds=5.0)
    times, stopped = timed_runs(clock.run, protocol, clock=clock)
    assert stopped == "cap"
    assert sum(times) / 1000 >= protocol.max_seconds
    assert sum(times) / 1000 < protocol.max_seconds + 0.1 + 1e-9   # at most one run over


def test_the_count_cap_holds():
    rng = np.random.default_rng(1)
    clock = FakeClock(rng.choice([0.001, 0.100], size=10_000))
    protocol = BenchProtocol(min_iterations=50, min_seconds=0.0, max_seconds=1e9,
                             max_iterations=300)
    times, stopped = timed_runs(clock.run, protocol, clock=clock)
    assert stopped == "cap" and len(times) == 300


def test_ci_zero_is_the_fixed_length_protocol():
    rng = np.random.default_rng(2)
    clock = FakeClock(rng.choice([0.001, 0.100], size=10_000))
    times, stopped = timed_runs(clock.run, BenchProtocol(min_iterations=100, min_seconds=0.0,
                                                         ci_pct=0, max_seconds=60.0),
                                clock=clock)
    assert stopped == "fixed" and len(times) == 100


def test_a_wider_target_stops_no_later():
    durations = np.random.default_rng(3).lognormal(np.log(0.005), 0.1, size=20_000)
    runs = {}
    for pct in (1.0, 5.0):
        clock = FakeClock(durations)
        times, stopped = timed_runs(clock.run, BenchProtocol(ci_pct=pct, max_seconds=60.0),
                                    clock=clock)
        assert stopped == "ci"
        runs[pct] = len(times)
    assert runs[5.0] <= runs[1.0]


def test_the_interval_contains_the_p50_and_is_seeded():
    t = np.random.default_rng(4).lognormal(0.0, 0.2, size=500)
    lo, hi = p50_ci95(t)
    assert lo <= np.median(t) <= hi and lo < hi
    assert p50_ci95(t) == (lo, hi)
    # per-repeat groups are resampled within each group
    lo2, hi2 = p50_ci95([t[:250], t[250:]])
    assert lo2 <= np.median(t) <= hi2


def test_the_result_reports_the_interval_and_the_stop():
    repeats = [np.random.default_rng(s).lognormal(0.0, 0.1, size=200) for s in (5, 6)]
    result = summarize(repeats, [float(np.median(r)) for r in repeats], 10.0, 2.0, None, {},
                       ["ci", "cap"])
    data = result.to_dict()
    lo, hi = data["p50_ci95_ms"]
    assert lo <= data["p50_ms"] <= hi
    assert data["stopped"] == "cap" and data["stopped"] in STOP_REASONS
    assert data["repeat_stopped"] == ["ci", "cap"]
    assert data["iterations"] == 400


def test_old_protocol_fields_still_build_a_protocol():
    old = {"warmup": 10, "min_iterations": 100, "min_seconds": 3.0, "max_seconds": 60.0,
           "repeats": 3, "threads": None}
    protocol = BenchProtocol(**old)
    assert protocol.ci_pct == BenchProtocol().ci_pct


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ci_pct": -1}, "--bench-ci -1"),
    ({"min_iterations": 50, "max_iterations": 10}, "max_iterations 10"),
    ({"min_seconds": 5.0, "max_seconds": 2.0}, "--bench-max-seconds 2.0"),
])
def test_bad_protocols_are_named(kwargs, message):
    with pytest.raises(InvalidProtocol, match=message):
        BenchProtocol(**kwargs)


def test_a_longer_minimum_on_the_command_line_lifts_the_cap():
    from edgeopt._cli_parser import bench_protocol, build_parser

    args = build_parser().parse_args(["bench", "m.onnx", "--bench-seconds", "5"])
    protocol = bench_protocol(args)
    assert protocol.min_seconds == 5.0 and protocol.max_seconds == 5.0
    args = build_parser().parse_args(["bench", "m.onnx", "--bench-ci", "0",
                                      "--bench-max-seconds", "20"])
    assert bench_protocol(args).ci_pct == 0 and bench_protocol(args).max_seconds == 20.0
