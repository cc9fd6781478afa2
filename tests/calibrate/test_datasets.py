"""Evaluation data: never the calibration samples, labels from every source, a seeded
spread rather than the first N, and one-line errors for bad labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edgeopt.calibrate.datasets import check_disjoint, read_dataset, read_split
from edgeopt.calibrate.errors import CalibrationDataError

SPEC = [("input", "float32", (1, 3, 8, 8))]
PRE = "resize=8,crop=8"
FAST = ("--no-bench", "--quiet")       # accuracy is the point here, not latency


def _images(folder, n, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):    # image i has the same pixels in every folder
        pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")
    return folder


def test_a_split_never_evaluates_on_a_calibration_sample(tmp_path):
    folder = _images(tmp_path / "data", 40)
    calib, held_out = read_split(str(folder), SPEC, None, None, PRE)
    assert len(calib.samples) + len(held_out.samples) == 40
    assert not set(calib.keys()) & set(held_out.keys())
    assert "seeded split" in held_out.note


def test_sample_counts_are_a_spread_over_the_whole_folder(tmp_path):
    folder = _images(tmp_path / "data", 60)
    first_ten = {f"img{i:03d}.png" for i in range(10)}
    chosen = read_dataset(str(folder), SPEC, 10, PRE, role="calibration")
    files = sorted(folder.iterdir())
    keys = {k: p.name for p, k in zip(files, read_dataset(str(folder), SPEC, 60, PRE).keys(),
                                      strict=True)}
    names = {keys[k] for k in chosen.keys()}
    assert len(names) == 10 and names != first_ten
    assert max(int(n[3:6]) for n in names) >= 30       # reaches into the second half


def test_labels_from_csv_class_folders_and_npz(tmp_path):
    folder = _images(tmp_path / "csv", 6)
    (folder / "labels.csv").write_text("file,label\n" + "".join(
        f"img{i:03d}.png,{i % 3}\n" for i in range(6)))
    assert sorted(read_dataset(str(folder), SPEC, None, PRE).labels) == [0, 0, 1, 1, 2, 2]

    classes = tmp_path / "classes"
    _images(classes / "cat", 2)
    _images(classes / "dog", 3, start=10)
    assert list(read_dataset(str(classes), SPEC, None, PRE).labels) == [0, 0, 1, 1, 1]

    npz = tmp_path / "data.npz"
    np.savez(npz, input=np.ones((4, 3, 8, 8), np.float32), labels=np.arange(4))
    found = read_dataset(str(npz), SPEC, None)
    assert list(found.labels) == [0, 1, 2, 3] and len(found.samples) == 4


@pytest.mark.parametrize(("csv", "classes", "expected"), [
    ("file,label\nimg000.png,0\n", None, "no label for img001.png"),
    ("file,label\nimg000.png,0\nimg001.png,1\nghost.png,2\n", None, "ghost.png is listed"),
    ("file,label\nimg000.png,cat\nimg001.png,dog\n", None, "'cat' is not a class index"),
    ("file,label\nimg000.png,cat\nimg001.png,cow\n", "cat\ndog\n", "unknown class 'cow'"),
    ("name,class\nimg000.png,0\n", None, "'file' and 'label' columns"),
])
def test_bad_labels_get_one_line(tmp_path, csv, classes, expected):
    folder = _images(tmp_path / "data", 2)
    (folder / "labels.csv").write_text(csv)
    if classes:
        (folder / "classes.txt").write_text(classes)
    with pytest.raises(CalibrationDataError, match=expected) as e:
        read_dataset(str(folder), SPEC, None, PRE)
    assert "\n" not in str(e.value)


def test_held_out_data_that_overlaps_calibration_is_refused(tmp_path):
    folder = _images(tmp_path / "a", 6)
    other = _images(tmp_path / "b", 3, start=4)      # img004, img005 are in both
    calib = read_dataset(str(folder), SPEC, None, PRE, role="calibration")
    with pytest.raises(CalibrationDataError, match="shares 2 sample"):
        check_disjoint(calib, read_dataset(str(other), SPEC, None, PRE), str(other))


def test_eval_flag_end_to_end_with_labels_and_a_custom_metric(run_cli, tmp_path, tiny_onnx):
    rng = np.random.default_rng(0)
    calib, held_out = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, input=rng.standard_normal((16, 3, 8, 8)).astype(np.float32))
    np.savez(held_out, input=rng.standard_normal((12, 3, 8, 8)).astype(np.float32),
             labels=rng.integers(0, 4, 12))
    out = tmp_path / "out"
    result = run_cli("optimize", tiny_onnx, "--calib", calib, "--eval", held_out,
                     "--metric", "metric_functions:mean_max_score", "--runtime", "onnxruntime",
                     "--out", out, *FAST)
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["metric"] == "metric_functions:mean_max_score"
    assert "eval.npz" in report["data"]["evaluation"] and "labelled" in report["data"]["evaluation"]
    for art in report["artifacts"]:
        acc = art["accuracy"]
        assert acc["samples"] == 12
        assert {"top1", "agreement"} <= set(acc)         # labelled classifier figures
        assert len(acc["outputs"]) == 1 and acc["outputs"][0]["output"] == "logits"

    overlap = run_cli("optimize", tiny_onnx, "--calib", calib, "--eval", calib,
                      "--out", tmp_path / "o2", *FAST)
    assert overlap.code == 2 and "shares 16 sample" in overlap.err
    assert not (tmp_path / "o2").exists()


def test_budget_on_top1_and_unlabelled_top1_is_refused(run_cli, tmp_path, tiny_onnx):
    rng = np.random.default_rng(1)
    calib, held_out = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, input=rng.standard_normal((16, 3, 8, 8)).astype(np.float32))
    np.savez(held_out, input=rng.standard_normal((12, 3, 8, 8)).astype(np.float32),
             labels=rng.integers(0, 4, 12))
    out = tmp_path / "out"
    result = run_cli("optimize", tiny_onnx, "--calib", calib, "--eval", held_out, "--metric",
                     "top1", "--max-accuracy-drop", "0.5", "--runtime", "onnxruntime",
                     "--out", out, *FAST)
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["metric"] == "top1"
    assert report["accuracy_budget"]["runtimes"]["onnxruntime"]["met"]

    unlabelled = run_cli("optimize", tiny_onnx, "--calib", calib, "--metric", "top5",
                         "--out", tmp_path / "o2", *FAST)
    assert unlabelled.code == 2 and "--metric top5 compares with labels" in unlabelled.err
