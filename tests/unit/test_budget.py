"""The accuracy-budget search: try the most damaged groups in FP32, keep only what helps."""

from __future__ import annotations

import pytest

from edgeopt.backends import Artifact
from edgeopt.budget import Budget, within_budget


def _search(metric: dict, ranking: list, allowed: float, max_fp32_nodes=None):
    """Run the search with a fake quantizer whose metric is looked up by FP32 node set."""
    built, warnings = [], []

    def build(excluded):
        built.append(tuple(excluded))
        art = Artifact("m.int8.onnx", "onnx", "int8", "some-runtime",
                       quantization={"excluded_nodes": []})
        art.accuracy = {"key": tuple(excluded)}
        return art

    budget = Budget("x", 1.0, allowed, max_fp32_nodes)
    outcome = within_budget("some-runtime", budget, build, lambda art: metric[art.accuracy["key"]],
                            lambda art: ranking, warnings.append)
    return built, outcome.value, outcome.reverted, budget


def test_a_revert_that_does_not_help_is_undone_and_the_search_goes_on():
    metric = {(): 0.80, ("a",): 0.78, ("b",): 0.90, ("b", "c"): 0.97}
    built, value, excluded, _ = _search(metric, [("a",), ("b",), ("c",)], allowed=0.05)
    assert built == [(), ("a",), ("b",), ("b", "c")]
    assert excluded == ["b", "c"] and value == pytest.approx(0.97)


def test_the_best_configuration_is_rebuilt_when_the_last_trial_lost():
    metric = {(): 0.80, ("a",): 0.90, ("a", "b"): 0.85}
    built, value, excluded, _ = _search(metric, [("a",), ("b",)], allowed=0.01)
    assert built == [(), ("a",), ("a", "b"), ("a",)]
    assert excluded == ["a"] and value == pytest.approx(0.90)


def test_max_fp32_nodes_stops_the_search():
    metric = {(): 0.80, ("a", "b"): 1.0}
    built, value, excluded, budget = _search(metric, [("a", "b")], allowed=0.01,
                                             max_fp32_nodes=1)
    assert built == [()] and excluded == [] and value == pytest.approx(0.80)
    assert budget.stopped == "--max-fp32-nodes 1 reached"
