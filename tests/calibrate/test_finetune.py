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

from _ddp_finetune import digits, digits_data, tiny_net  # noqa: E402

HERE = Path(__file__).parent
NAMES = ["input"]
SPECS = [("input", "float32", (1, 1, 8, 8))]


def _config(**kwargs):
    from edgeopt.calibrate.finetune import FinetuneConfig

    return FinetuneConfig(**{"epochs": 2, "lr": 3e-3, **kwargs})


# --- training ---------------------------------------------------------------------------

def test_labels_train_the_task():
    from edgeopt.calibrate.finetune import finetune, validate

    model, data = tiny_net(), digits_data()
    before = validate(model, data, NAMES)
    bn_mean = model[1].running_mean.clone()
    seen = []
    result = finetune(model, data, _config(epochs=4), input_names=NAMES,
                      progress=lambda epoch, record: seen.append((epoch, record)))
    assert result.mode == "labels" and result.world_size == 1 and result.global_batch == 32
    assert [r["epoch"] for r in result.epochs] == [1, 2, 3, 4]
    assert seen == [(r["epoch"], r) for r in result.epochs]
    assert result.epochs[-1]["loss"] < 0.5 * result.epochs[0]["loss"]
    assert result.epochs[-1]["val_metric"] > max(before + 0.3, 0.5)
    assert torch.equal(model[1].running_mean, bn_mean)         # BatchNorm statistics frozen
    assert not model.training


def test_same_seed_same_weights_other_seed_other_weights():
    from edgeopt.calibrate.finetune import finetune

    runs = []
    for seed in (0, 0, 1):
        model = tiny_net()
        finetune(model, digits_data(), _config(epochs=1, seed=seed), input_names=NAMES)
        runs.append(model[4].weight.detach().clone())
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


def test_distillation_pulls_the_student_to_the_teacher():
    from edgeopt.calibrate.finetune import finetune, validate

    teacher = tiny_net(0)
    finetune(teacher, digits_data(), _config(epochs=3), input_names=NAMES)
    teacher_weights = teacher[4].weight.detach().clone()
    student = tiny_net(1)
    data = digits_data(labelled=False)
    before = validate(student, data, NAMES, teacher)
    result = finetune(student, data, _config(epochs=4, temperature=2.0), input_names=NAMES,
                      teacher=teacher)
    assert result.mode == "distill"
    assert result.epochs[-1]["val_metric"] > before + 0.3
    assert torch.equal(teacher[4].weight, teacher_weights)     # the teacher is not trained


def test_weight_decay_is_l2():
    from edgeopt.calibrate.finetune import finetune

    norms = []
    for wd in (0.0, 0.5):
        model = tiny_net()
        finetune(model, digits_data(), _config(lr=1e-3, weight_decay=wd), input_names=NAMES)
        norms.append(float(model[4].weight.detach().norm()))
    assert norms[1] < 0.9 * norms[0]


def test_extra_loss_is_added_and_epoch_hook_called():
    from edgeopt.calibrate.finetune import finetune

    plain = tiny_net()
    finetune(plain, digits_data(), _config(lr=1e-2), input_names=NAMES)
    model = tiny_net()
    calls = []
    result = finetune(model, digits_data(), _config(lr=1e-2), input_names=NAMES,
                      extra_loss=lambda: 100.0 * (model[4].bias - 5.0).pow(2).sum(),
                      on_epoch_end=calls.append)
    assert calls == [0, 1]
    # Adam moves each weight by about lr per step: 20 steps all pulling the bias up
    assert float(model[4].bias.detach().mean()) > float(plain[4].bias.detach().mean()) + 0.08
    assert result.epochs[0]["loss"] > 1000          # the reported loss includes it


def test_one_process_is_rank_0_of_1():
    from edgeopt.calibrate.finetune import init_distributed, is_main_process

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        pytest.skip("running under torchrun")
    assert init_distributed() == (0, 1)
    assert is_main_process()


# --- settings and data given to finetune() -------------------------------------------------

@pytest.mark.parametrize(("kwargs", "text"), [
    ({"epochs": 0}, "--epochs 0 must be >= 1"), ({"epochs": 1, "lr": 0}, "--lr 0 must be > 0"),
    ({"epochs": 1, "weight_decay": -1}, "--weight-decay -1 must be >= 0"),
    ({"epochs": 1, "batch_size": 0}, "--batch-size 0 must be >= 1"),
    ({"epochs": 1, "temperature": 0}, "distillation temperature 0 must be > 0"),
    ({"epochs": 0, "lr": -1}, "--epochs 0 must be >= 1; --lr -1 must be > 0")])
def test_bad_settings(kwargs, text):
    from edgeopt.calibrate.finetune import FinetuneConfig, FinetuneError

    with pytest.raises(FinetuneError) as info:
        FinetuneConfig(**kwargs)
    assert text in str(info.value) and "\n" not in str(info.value)


def _with(data, **changes):
    from dataclasses import replace

    return replace(data, **changes)


@pytest.mark.parametrize(("data", "text"), [
    (lambda d: _with(d, labels=None, val_labels=None), "needs the unpruned model"),
    (lambda d: _with(d, labels=d.labels[:-1]), "one integer class index per sample (320)"),
    (lambda d: _with(d, labels=d.labels.astype(np.float32)), "are float32"),
    (lambda d: _with(d, val_labels=None), "labels for the training or the validation"),
    (lambda d: _with(d, labels=d.labels + 5), "a label is 14 but the model has 10 classes"),
    (lambda d: _with(d, labels=d.labels - 1), "negative labels"),
    (lambda d: _with(d, inputs=[{"x": s["input"]} for s in d.inputs]), "no input(s) input"),
])
def test_bad_finetune_arguments(data, text):
    from edgeopt.calibrate.finetune import FinetuneError, finetune

    model = tiny_net()
    start = model[4].weight.detach().clone()
    with pytest.raises(FinetuneError) as info:
        finetune(model, data(digits_data()), _config(epochs=1), input_names=NAMES)
    assert text in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert torch.equal(model[4].weight, start)


def test_no_full_batch_and_not_logits():
    from edgeopt.calibrate.finetune import FinetuneError, finetune

    with pytest.raises(FinetuneError, match="320 fine-tuning samples make no full batch of 1000"):
        finetune(tiny_net(), digits_data(), _config(batch_size=1000), input_names=NAMES)
    flat = torch.nn.Sequential(tiny_net(), torch.nn.Flatten(0))
    with pytest.raises(FinetuneError, match=r"first output is \(10,\) for one sample"):
        finetune(flat, digits_data(), _config(), input_names=NAMES)


# --- reading --finetune-data ---------------------------------------------------------------

def _stack(n: int = 50):
    inputs, labels = digits(n)
    return np.concatenate([s["input"] for s in inputs]), labels


def _level(k: int, i: int) -> int:
    """The gray level of image i of the k-th class folder: distinct for 2 folders x 3."""
    return (7 * k + 29 * i) % 256


def _images(folder: Path, names: list[str], count: int = 3) -> None:
    from PIL import Image

    for k, name in enumerate(names):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = np.full((8, 8), _level(k, i), np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


GRAY = "scale=1/255,order=gray"


def test_npz_with_labels_is_split_and_seeded(tmp_path):
    from edgeopt.calibrate.finetune_data import read_finetune_data

    x, labels = _stack()
    np.savez(tmp_path / "d.npz", input=x, labels=labels)
    data = read_finetune_data(tmp_path / "d.npz", SPECS, val_fraction=0.2)
    assert len(data.inputs) == 40 and len(data.val_inputs) == 10
    assert data.labels.dtype == np.int64
    assert sorted(np.concatenate([data.labels, data.val_labels])) == sorted(labels)
    # each sample keeps its own label, and train and validation are disjoint
    by_pixels = {x[i].tobytes(): int(labels[i]) for i in range(len(labels))}
    pairs = list(zip(data.inputs + data.val_inputs,
                     np.concatenate([data.labels, data.val_labels]), strict=True))
    assert all(by_pixels[s["input"][0].tobytes()] == label for s, label in pairs)
    assert len({s["input"].tobytes() for s, _ in pairs}) == len({v.tobytes() for v in x})
    again = read_finetune_data(tmp_path / "d.npz", SPECS, val_fraction=0.2)
    assert np.array_equal(again.val_labels, data.val_labels)
    other = read_finetune_data(tmp_path / "d.npz", SPECS, val_fraction=0.2, seed=1)
    assert not np.array_equal(other.val_labels, data.val_labels)
    unlabelled = tmp_path / "u.npz"
    np.savez(unlabelled, input=x)
    assert read_finetune_data(unlabelled, SPECS).labels is None


def test_class_folders_are_labelled_and_limit_draws_from_every_class(tmp_path):
    from edgeopt.calibrate.finetune_data import read_finetune_data

    _images(tmp_path / "img", ["cat", "dog"])
    data = read_finetune_data(tmp_path / "img", SPECS, preprocess=GRAY, val_fraction=0.34)
    assert sorted(np.concatenate([data.labels, data.val_labels])) == [0, 0, 0, 1, 1, 1]
    assert data.inputs[0]["input"].shape == (1, 1, 8, 8)
    # each image keeps its folder's label (cat 0, dog 1)
    label_of = {_level(k, i): k for k in (0, 1) for i in range(3)}
    pairs = zip(data.inputs + data.val_inputs, np.concatenate([data.labels, data.val_labels]),
                strict=True)
    assert all(label_of[round(float(s["input"].flat[0]) * 255)] == label for s, label in pairs)
    _images(tmp_path / "many", ["a", "b", "c", "d"], count=10)
    limited = read_finetune_data(tmp_path / "many", SPECS, preprocess=GRAY, limit=12)
    assert len(limited.inputs) + len(limited.val_inputs) == 12
    assert len(set(np.concatenate([limited.labels, limited.val_labels]).tolist())) >= 3
    assert "12 of 40 images in 4 class folders" in limited.note


def test_folder_of_npz_and_of_flat_images(tmp_path):
    from edgeopt.calibrate.finetune_data import read_finetune_data

    x, labels = _stack(20)
    (tmp_path / "npz").mkdir()
    np.savez(tmp_path / "npz" / "a.npz", input=x[:10], labels=labels[:10])
    np.savez(tmp_path / "npz" / "b.npz", input=x[10:], labels=labels[10:])
    data = read_finetune_data(tmp_path / "npz", SPECS)
    assert sorted(np.concatenate([data.labels, data.val_labels])) == sorted(labels)
    _images(tmp_path, ["flat"])
    flat = read_finetune_data(tmp_path / "flat", SPECS, preprocess=GRAY)
    assert flat.labels is None and len(flat.inputs) + len(flat.val_inputs) == 3


def _npz(name: str, **arrays):
    def make(p: Path) -> Path:
        np.savez(p / name, **arrays)
        return p / name
    return make


def _zeros(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


def _class_tree(p: Path, loose: bool = False, empty: bool = False, classes=("cat", "dog")):
    _images(p / "tree", list(classes))
    if loose:
        _images(p, ["tree"])          # images beside the class folders
    if empty:
        (p / "tree" / "bird").mkdir()
    return p / "tree"


def _npz_folder(p: Path) -> Path:
    (p / "mixed").mkdir()
    np.savez(p / "mixed" / "a.npz", input=_zeros(4, 1, 8, 8), labels=_zeros(4, dtype=np.int64))
    np.savez(p / "mixed" / "b.npz", input=_zeros(4, 1, 8, 8))
    return p / "mixed"


@pytest.mark.parametrize(("make", "text"), [
    (lambda p: p / "missing", "no such file or folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "is empty"),
    (_npz("x.npz", input=_zeros(4, 1, 8, 8), labels=_zeros(3, dtype=np.int64)),
     "one label per sample (4)"),
    (_npz("x.npz", input=_zeros(4, 1, 8, 8), labels=_zeros(4)), "'labels' are float32"),
    (_npz("x.npz", input=_zeros(4, 1, 8, 8), labels=-np.ones(4, np.int64)), "negative values"),
    (_npz("x.npz", input=_zeros(4, 1, 9, 9)), "has shape 4x1x9x9"),
    (_npz("x.npz", input=_zeros(4, 1, 8, 8, dtype=np.int32)), "is int32, the model takes float32"),
    (_npz("x.npz", other=_zeros(4, 1, 8, 8), labels=_zeros(4, dtype=np.int64)),
     "no array for input(s) input"),
    (_npz("x.npz", input=np.full((4, 1, 8, 8), np.nan, np.float32)), "contains NaN"),
    (_npz("x.npz", input=np.full((4, 1, 8, 8), np.inf, np.float32)), "contains Inf"),
    (lambda p: np.save(p / "one.npy", _zeros(1, 1, 8, 8)) or p / "one.npy", "at least 2"),
    (_npz_folder, "a.npz has 'labels' but b.npz has none"),
    (lambda p: _class_tree(p, loose=True), "also 0.png beside them"),
    (lambda p: _class_tree(p, empty=True), "class folder bird holds no images"),
    (lambda p: _class_tree(p, classes=("cat",)), "one class folder (cat)"),
])
def test_bad_finetune_data(tmp_path, make, text):
    from edgeopt.calibrate.finetune import FinetuneError
    from edgeopt.calibrate.finetune_data import read_finetune_data

    path = make(tmp_path)
    with pytest.raises(FinetuneError) as info:
        read_finetune_data(path, SPECS, preprocess=GRAY)
    message = str(info.value)
    assert "\n" not in message and text in message and path.name in message, message


def test_bad_split_limit_and_missing_preprocess(tmp_path):
    from edgeopt.calibrate.errors import CalibrationError
    from edgeopt.calibrate.finetune import FinetuneError
    from edgeopt.calibrate.finetune_data import read_finetune_data

    assert issubclass(FinetuneError, CalibrationError)
    np.savez(tmp_path / "x.npz", input=_zeros(4, 1, 8, 8))
    with pytest.raises(FinetuneError, match=r"validation fraction 1.0 must be in \[0, 1\)"):
        read_finetune_data(tmp_path / "x.npz", SPECS, val_fraction=1.0)
    with pytest.raises(FinetuneError, match="limit 1 must be >= 2"):
        read_finetune_data(tmp_path / "x.npz", SPECS, limit=1)
    tree = _class_tree(tmp_path)
    with pytest.raises(FinetuneError, match=f"{tree.name} holds images: pass --preprocess"):
        read_finetune_data(tree, SPECS)


# --- DDP ----------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def test_two_processes_match_one(tmp_path):
    """DDP on gloo with the same global batch gives the weights and losses one process gives."""
    script = str(HERE / "_ddp_finetune.py")
    _run([sys.executable, script, str(tmp_path / "one.pt")])
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
          "--master-port", str(_free_port()), script, str(tmp_path / "two.pt")])
    one, two = (torch.load(tmp_path / f, weights_only=True) for f in ("one.pt", "two.pt"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    start = tiny_net().state_dict()
    assert max(float((one["state"][k] - start[k]).abs().max()) for k in start) > 1e-2  # trained
    worst = max(float((one["state"][k] - two["state"][k]).abs().max()) for k in start)
    assert worst < 1e-5, worst
    for a, b in zip(one["epochs"], two["epochs"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["val_metric"] == b["val_metric"]
