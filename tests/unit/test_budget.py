"""The accuracy-budget search: try the most damaged groups in FP32, keep only what helps."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeopt.pipeline import Artifact, _within_budget
from edgeopt.recipe import OptimizeConfig


class _Steps:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, text: str) -> None:
        self.warnings.append(text)


def _search(metric: dict, ranking: list, allowed: float, **options):
    """Run the search with a fake quantizer whose metric is looked up by FP32 node set."""
    built = []

    def build(runtime, excluded):
        built.append(tuple(excluded))
        art = Artifact("m.int8-ort.onnx", "onnx", "int8", runtime,
                       quantization={"excluded_nodes": []})
        art.accuracy = {"key": tuple(excluded)}
        return art

    budget = {"stopped": "every candidate node in FP32"}
    art, value, excluded, _ = _within_budget(
        "onnxruntime", OptimizeConfig(model="m.onnx", out=Path("out"), **options), allowed,
        1.0, ranking, budget, build, lambda art: ranking,
        lambda art: metric[art.accuracy["key"]], _Steps())
    return built, value, excluded, budget


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
    assert budget["stopped"] == "--max-fp32-nodes 1 reached"
