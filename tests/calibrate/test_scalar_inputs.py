"""0-d (scalar) inputs stay 0-d in every kind of calibration data, and run on both
runtimes' adapters as 0-d."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.calibrate.data import check_sample, random_samples, read_array_file

SPECS = [("audio", "float32", (1, 256)), ("sr", "int64", ())]


def test_random_data_keeps_every_shape_and_dtype():
    specs = [*SPECS, ("gain", "float16", ()), ("mask", "bool", (1, 4))]
    (sample,) = random_samples(specs, 1)
    assert {k: (v.shape, v.dtype.name) for k, v in sample.items()} == {
        "audio": ((1, 256), "float32"), "sr": ((), "int64"), "gain": ((), "float16"),
        "mask": ((1, 4), "bool")}
    assert all(isinstance(v, np.ndarray) for v in sample.values())
    masks = np.concatenate([s["mask"] for s in random_samples(specs, 16)])
    assert masks.any() and not masks.all()          # both values drawn


def test_factory_and_array_files_keep_scalars_0d(tmp_path):
    sample = check_sample({"audio": np.zeros((1, 256), np.float32), "sr": 16000}, SPECS, "s")
    assert sample["sr"].shape == () and sample["sr"].dtype == np.int64
    np.savez(tmp_path / "stack.npz", audio=np.zeros((5, 256), np.float32),
             sr=np.full(5, 8000, np.int64))
    samples = read_array_file(tmp_path / "stack.npz", SPECS)
    assert len(samples) == 5 and {s["sr"].shape for s in samples} == {()}


@pytest.mark.parametrize("adapter", ["ort-cpu", "ov-cpu"])
def test_both_runtimes_run_a_0d_input_as_0d(tmp_path, adapter):
    from zoo.graphs import build_scalar_input

    from edgeopt.runtimes import get_adapter

    loaded = get_adapter(adapter).load(build_scalar_input(tmp_path))
    audio = np.ones((1, 256), np.float32)
    at16k = loaded.run({"audio": audio, "sr": np.array(16000, np.int64)})[0]
    at8k = loaded.run({"audio": audio, "sr": np.array(8000, np.int64)})[0]
    assert at16k.shape == (1, 1) and not np.allclose(at16k, at8k)   # the If took both
