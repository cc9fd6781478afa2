"""Samples kept on disk once decoded: read back exactly, each image decoded once."""

from __future__ import annotations

import pickle

import numpy as np
from PIL import Image

import edgeopt.calibrate.datasets as datasets
from edgeopt.calibrate.spill import SpilledSamples
from edgeopt.reference_models import get_reference


def test_samples_come_back_exactly():
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((1, 3, 4, 4)).astype(np.float32),
                "ids": rng.integers(0, 9, (1, 7)), "rate": np.array(16000, dtype=np.int32),
                "mask": np.array([True, False]), "empty": np.zeros((0, 3), np.float16),
                "strided": rng.standard_normal((6, 6))[::2, ::3]} for _ in range(5)]
    spilled = SpilledSamples(samples)
    assert len(spilled) == 5
    for got, want in zip([*spilled, spilled[-1], *spilled[1:3]],
                         [*samples, samples[-1], *samples[1:3]], strict=True):
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
            assert np.array_equal(got[k], want[k])
    spilled[0]["x"][:] = 0                       # a caller's copy: the store is unchanged
    assert np.array_equal(spilled[0]["x"], samples[0]["x"])
    again = pickle.loads(pickle.dumps(spilled))
    assert np.array_equal(again[4]["ids"], samples[4]["ids"])


def test_images_are_decoded_once_and_kept_on_disk(tmp_path, monkeypatch):
    for i in range(6):
        pixels = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"img{i}.png")
    decoded = []
    real = datasets.image_sample
    monkeypatch.setattr(datasets, "image_sample",
                        lambda path, *a: decoded.append(path) or real(path, *a))
    found = datasets.read_dataset(str(tmp_path), [("input", "float32", (1, 3, 8, 8))], None,
                                  "resize=8,crop=8")
    assert isinstance(found.samples, SpilledSamples) and len(found.samples) == 6
    for _ in range(3):                            # passes read the disk, not the images
        assert [s["input"].shape for s in found.samples] == [(1, 3, 8, 8)] * 6
    assert len(decoded) == 6


def test_reference_sets_are_kept_on_disk():
    ref = get_reference("digits-cnn")
    calib, evaluation = ref.calibration_set(20), ref.evaluation_set(10)
    assert isinstance(calib, SpilledSamples) and isinstance(evaluation.inputs, SpilledSamples)
    assert calib[3]["input"].shape == tuple(ref.input_shape)
