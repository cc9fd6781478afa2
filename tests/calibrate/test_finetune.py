"""Fine-tuning after pruning: it trains what it says (labels, distillation, L2, an extra loss),
in one process or two (DDP), and bad settings or data are one-line errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

HERE = Path(__file__).parent


def _digits(n: int = 400):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:n] / 16.0).astype(np.float32)[:, None]
    return [{"input": a[None]} for a in x], d.target[:n].astype(np.int64)


def _net(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(512, 10))


def _data(labelled: bool = True):
    from edgeopt.calibrate.finetune import FinetuneData

    inputs, labels = _digits()
    return FinetuneData(inputs[:320], labels[:320] if labelled else None, inputs[320:],
                        labels[320:] if labelled else None, "digits")


def test_labels_train_the_task():
    from edgeopt.calibrate.finetune import FinetuneConfig, finetune, validate

    model, data = _net(), _data()
    before = validate(model, data, ["input"])
    bn_mean = model[1].running_mean.clone()
    result = finetune(model, data, FinetuneConfig(epochs=4, lr=3e-3), input_names=["input"])
    assert result.mode == "labels" and result.world_size == 1
    assert result.epochs[-1]["loss"] < result.epochs[0]["loss"]
    assert result.epochs[-1]["val_metric"] > max(before, 0.5)
    assert torch.equal(model[1].running_mean, bn_mean)         # BatchNorm statistics frozen
    assert not model.training


def test_distillation_pulls_the_student_to_the_teacher():
    from edgeopt.calibrate.finetune import FinetuneConfig, finetune, validate

    teacher = _net(0)
    finetune(teacher, _data(), FinetuneConfig(epochs=3, lr=3e-3), input_names=["input"])
    student = _net(1)
    data = _data(labelled=False)
    before = validate(student, data, ["input"], teacher)
    result = finetune(student, data, FinetuneConfig(epochs=4, lr=3e-3), input_names=["input"],
                      teacher=teacher)
    assert result.mode == "distill"
    assert result.epochs[-1]["val_metric"] > before + 0.3


def test_weight_decay_is_l2():
    from edgeopt.calibrate.finetune import FinetuneConfig, finetune

    norms = []
    for wd in (0.0, 0.5):
        model = _net()
        finetune(model, _data(), FinetuneConfig(epochs=2, lr=1e-3, weight_decay=wd),
                 input_names=["input"])
        norms.append(float(model[4].weight.norm()))
    assert norms[1] < 0.9 * norms[0]


def test_extra_loss_is_added_and_epoch_hook_called():
    from edgeopt.calibrate.finetune import FinetuneConfig, finetune

    plain = _net()
    finetune(plain, _data(), FinetuneConfig(epochs=2, lr=1e-2), input_names=["input"])
    model = _net()
    calls = []
    finetune(model, _data(), FinetuneConfig(epochs=2, lr=1e-2), input_names=["input"],
             extra_loss=lambda: 100.0 * (model[4].bias - 5.0).pow(2).sum(),
             on_epoch_end=calls.append)
    assert calls == [0, 1]
    # Adam moves each weight by about lr per step: 20 steps all pulling the bias up
    assert float(model[4].bias.mean()) > float(plain[4].bias.mean()) + 0.08


@pytest.mark.parametrize(("kwargs", "text"), [
    ({"epochs": 0}, "--epochs 0 must be >= 1"), ({"epochs": 1, "lr": 0}, "--lr 0 must be > 0"),
    ({"epochs": 1, "weight_decay": -1}, "--weight-decay -1 must be >= 0"),
    ({"epochs": 1, "batch_size": 0}, "--batch-size 0 must be >= 1")])
def test_bad_settings(kwargs, text):
    from edgeopt.calibrate.finetune import FinetuneConfig, FinetuneError

    with pytest.raises(FinetuneError, match=text):
        FinetuneConfig(**kwargs)


def test_unlabelled_data_needs_a_teacher_and_a_full_batch():
    from edgeopt.calibrate.finetune import FinetuneConfig, FinetuneError, finetune

    with pytest.raises(FinetuneError, match="needs the unpruned model"):
        finetune(_net(), _data(labelled=False), FinetuneConfig(epochs=1), input_names=["input"])
    with pytest.raises(FinetuneError, match="no full batch of 1000"):
        finetune(_net(), _data(), FinetuneConfig(epochs=1, batch_size=1000),
                 input_names=["input"])


SPECS = [("input", "float32", (1, 1, 8, 8))]


def test_npz_with_labels_and_class_folders(tmp_path):
    from PIL import Image

    from edgeopt.calibrate.finetune_data import read_finetune_data

    inputs, labels = _digits(50)
    np.savez(tmp_path / "d.npz", input=np.concatenate([s["input"] for s in inputs]),
             labels=labels)
    data = read_finetune_data(tmp_path / "d.npz", SPECS, val_fraction=0.2)
    assert len(data.inputs) == 40 and len(data.val_inputs) == 10
    assert sorted(np.concatenate([data.labels, data.val_labels])) == sorted(labels)
    for name in ("cat", "dog"):
        (tmp_path / "img" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "img" / name / f"{i}.png")
    data = read_finetune_data(tmp_path / "img", SPECS, preprocess="scale=1/255,order=gray",
                              val_fraction=0.34)
    assert sorted(np.concatenate([data.labels, data.val_labels])) == [0, 0, 0, 1, 1, 1]
    assert data.inputs[0]["input"].shape == (1, 1, 8, 8)


@pytest.mark.parametrize(("make", "text"), [
    (lambda p: p / "missing", "no such file or folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "is empty"),
    (lambda p: np.savez(p / "x.npz", input=np.zeros((4, 1, 8, 8), np.float32),
                        labels=np.zeros(3, np.int64)) or p / "x.npz", "one label per sample (4)"),
    (lambda p: np.savez(p / "x.npz", input=np.zeros((4, 1, 8, 8), np.float32),
                        labels=np.zeros(4, np.float32)) or p / "x.npz", "expected integer"),
    (lambda p: np.savez(p / "x.npz", input=np.zeros((4, 1, 9, 9), np.float32)) or p / "x.npz",
     "has shape 4x1x9x9"),
    (lambda p: np.savez(p / "x.npz", input=np.full((4, 1, 8, 8), np.nan, np.float32))
     or p / "x.npz", "NaN"),
    (lambda p: np.save(p / "one.npy", np.zeros((1, 1, 8, 8), np.float32)) or p / "one.npy",
     "at least 2"),
])
def test_bad_finetune_data(tmp_path, make, text):
    from edgeopt.calibrate.finetune import FinetuneError
    from edgeopt.calibrate.finetune_data import read_finetune_data

    path = make(tmp_path)
    with pytest.raises(FinetuneError) as info:
        read_finetune_data(path, SPECS)
    message = str(info.value)
    assert "\n" not in message and text in message and str(path.name) in message, message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    """DDP on gloo with the same global batch gives the weights one process gives."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(HERE / "_ddp_finetune.py")
    subprocess.run([sys.executable, script, str(tmp_path / "one.pt")], env=env, check=True,
                   timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                    "--master-port", str(_free_port()), script, str(tmp_path / "two.pt")],
                   env=env, check=True, timeout=300, capture_output=True)
    one, two = (torch.load(tmp_path / f, weights_only=True) for f in ("one.pt", "two.pt"))
    start = _net().state_dict()
    assert max(float((one[k] - start[k]).abs().max()) for k in one) > 1e-3      # it trained
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst < 1e-5, worst
