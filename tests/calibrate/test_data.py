"""Calibration data from every source: .npy/.npz, images + preprocessing, factories.

Each bad input raises one line that names the file (or sample) and the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeopt.calibrate import data as calib_data
from edgeopt.calibrate.data import read_calibration
from edgeopt.calibrate.errors import CalibrationDataError, PreprocessError
from edgeopt.calibrate.images import Preprocess, parse_preprocess, reference_preprocess

SPECS = [("input", "float32", (1, 3, 8, 8))]


def save(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
    return path


def solid(h: int, w: int, rgb=(200, 100, 50)) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (h, w, 3)).copy()


def raises_one_line(*fragments: str, error=CalibrationDataError):
    """Context manager: the error is one line and holds every fragment."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(error)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self.ctx.__exit__(*exc)
            message = str(self.info.value)
            assert "\n" not in message, message
            for fragment in fragments:
                assert fragment in message, (fragment, message)
            return suppressed

    return _Check()


# --- .npy / .npz ----------------------------------------------------------------------

def test_npy_and_npz_sources_keep_working(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((3, 3, 8, 8), dtype=np.float32))
    np.savez(tmp_path / "b.npz", input=np.zeros((1, 3, 8, 8), dtype=np.float64))
    found = read_calibration(tmp_path, SPECS)
    assert len(found.samples) == 4 and found.preprocessing is None
    assert all(s["input"].dtype == np.float32 and s["input"].shape == (1, 3, 8, 8)
               for s in found.samples)
    assert found.note == f"{tmp_path} (4 samples)"
    assert len(read_calibration(tmp_path / "a.npy", SPECS, limit=2).samples) == 2


# --- images -----------------------------------------------------------------------------

def test_image_values_follow_scale_mean_std_order_and_layout(tmp_path):
    save(tmp_path / "a.png", solid(8, 8, (200, 100, 50)))
    mean, std = (0.5, 0.25, 0.125), (0.25, 0.5, 2.0)
    pre = "mean=0.5:0.25:0.125,std=0.25:0.5:2,order=rgb,layout=nchw"
    (sample,) = read_calibration(tmp_path, SPECS, preprocess=pre).samples
    expected = [(v / 255 - m) / s for v, m, s in zip((200, 100, 50), mean, std, strict=True)]
    np.testing.assert_allclose(sample["input"][0, :, 0, 0], expected, rtol=1e-6)
    assert np.ptp(sample["input"], axis=(2, 3)).max() == 0        # a solid image stays solid

    nhwc = [("input", "float32", (1, 8, 8, 3))]
    (bgr,) = read_calibration(tmp_path, nhwc, preprocess={"order": "bgr", "layout": "nhwc",
                                                          "scale": 1}).samples
    np.testing.assert_array_equal(bgr["input"][0, 0, 0], [50, 100, 200])

    gray = [("input", "float32", (1, 1, 8, 8))]
    (one,) = read_calibration(tmp_path, gray, preprocess="order=gray,scale=1").samples
    # Pillow's ITU-R 601-2 luma: L = R * 299/1000 + G * 587/1000 + B * 114/1000
    assert one["input"].shape == (1, 1, 8, 8)
    assert one["input"][0, 0, 0, 0] == round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)


def test_resize_keeps_aspect_and_crop_takes_the_centre(tmp_path):
    # column index as the pixel value, so the crop's position shows in the output
    columns = np.tile(np.arange(10, dtype=np.uint8)[None, :, None], (6, 1, 3))
    save(tmp_path / "cols.png", columns)
    spec = [("input", "float32", (1, 3, 4, 4))]
    (sample,) = read_calibration(tmp_path, spec, preprocess="crop=4,scale=1").samples
    np.testing.assert_array_equal(sample["input"][0, 0, 0], [3, 4, 5, 6])

    wide = tmp_path / "wide"
    wide.mkdir()
    save(wide / "w.png", solid(20, 40))
    spec = [("input", "float32", (1, 10, 20, 3))]   # shorter side 20 -> 10, so 40 -> 20
    assert read_calibration(wide, spec, preprocess="resize=10,layout=nhwc").samples
    spec = [("input", "float32", (1, 3, 8, 6))]     # HxW: exactly that size
    assert read_calibration(wide, spec, preprocess="resize=8x6").samples


def test_mobilenet_preprocessing_matches_its_own_crops(tmp_path):
    """An image folder with ref:mobilenet-v2's preprocessing gives what random_crops does.

    random_crops takes a square of the photo, resizes it bilinearly to 224, divides by 255,
    transposes to CHW and normalises with ImageNet mean/std. For a square photo taken
    whole, unflipped, that is exactly the folder path's resize=224,crop=224.
    """
    from edgeopt.reference_models import mobilenet_v2 as mnv2

    rng = np.random.default_rng(7)
    photo = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    save(tmp_path / "photo.png", photo)
    size = mnv2.INPUT_SIZE
    crops = mnv2.crops_reference()
    pre = reference_preprocess(crops.preprocessing, crops.input_shape)
    assert pre is not None
    found = read_calibration(tmp_path, [("input", "float32", (1, 3, size, size))],
                             preprocess=pre)

    crop = Image.fromarray(photo).resize((size, size), Image.BILINEAR)
    arr = np.asarray(crop, dtype=np.float32) / 255.0
    mean = np.asarray(mnv2.IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(mnv2.IMAGENET_STD, dtype=np.float32)[:, None, None]
    expected = (arr.transpose(2, 0, 1) - mean) / std
    np.testing.assert_allclose(found.samples[0]["input"][0], expected, rtol=1e-5, atol=1e-5)
    assert found.preprocessing["spec"] == pre.to_spec()
    assert "resize=224,crop=224,mean=0.485:0.456:0.406" in found.note


def test_mobilenet_photo_preprocessing_matches_an_image_folder(tmp_path):
    """With the labelled photos, ref:mobilenet-v2 evaluates on shorter-side-256, centre-224
    crops; a folder read with its preprocessing gives the same arrays."""
    from edgeopt.reference_models import mobilenet_v2 as mnv2

    photo = np.random.default_rng(3).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    save(tmp_path / "photo.png", photo)
    described = {"resize": mnv2.PHOTO_SIZE, "crop": mnv2.INPUT_SIZE, "scale": 1 / 255,
                 "mean": list(mnv2.IMAGENET_MEAN), "std": list(mnv2.IMAGENET_STD),
                 "layout": "NCHW", "channel_order": "RGB", "interpolation": "bilinear"}
    pre = reference_preprocess(described, (1, 3, mnv2.INPUT_SIZE, mnv2.INPUT_SIZE))
    found = read_calibration(tmp_path, [("input", "float32", (1, 3, 224, 224))],
                             preprocess=pre)
    expected = mnv2.imagenet_arrays([(tmp_path / "photo.png", 0)])[0]
    np.testing.assert_allclose(found.samples[0]["input"][0], expected, rtol=1e-5, atol=1e-5)


def test_a_reference_without_8_bit_preprocessing_gives_no_default():
    from edgeopt.reference_models.digits_cnn import DIGITS_CNN

    assert reference_preprocess(DIGITS_CNN.preprocessing, DIGITS_CNN.input_shape) is None


def test_limit_decodes_no_more_images_than_needed(tmp_path, monkeypatch):
    for i in range(3):
        save(tmp_path / f"{i}.png", solid(8, 8))
    (tmp_path / "z-corrupt.png").write_bytes(b"\x89PNG not really")
    found = read_calibration(tmp_path, SPECS, limit=3, preprocess="scale=1")
    assert len(found.samples) == 3                  # the corrupt 4th file was never decoded
    assert found.note.startswith(f"3 of 4 images in {tmp_path}")
    with raises_one_line("z-corrupt.png", "cannot decode"):
        read_calibration(tmp_path, SPECS, preprocess="scale=1")
    monkeypatch.setattr(calib_data, "DEFAULT_STREAM_SAMPLES", 2)
    assert len(read_calibration(tmp_path, SPECS, preprocess="scale=1").samples) == 2


def test_every_supported_format_a_single_file_and_hidden_files(tmp_path):
    for suffix in ("jpg", "JPEG", "png", "bmp", "webp"):
        save(tmp_path / f"img.{suffix}", solid(8, 8))
    (tmp_path / "._img.jpg").write_bytes(b"AppleDouble junk")    # hidden: skipped
    (tmp_path / "notes.txt").write_text("not an image")          # other files: skipped
    assert len(read_calibration(tmp_path, SPECS, preprocess="scale=1").samples) == 5
    single = read_calibration(tmp_path / "img.png", SPECS, preprocess="scale=1")
    assert len(single.samples) == 1 and single.note.startswith(f"image {tmp_path / 'img.png'}")


def test_integer_input_takes_raw_pixels_only(tmp_path):
    save(tmp_path / "a.png", solid(8, 8))
    spec = [("input", "uint8", (1, 3, 8, 8))]
    (sample,) = read_calibration(tmp_path, spec, preprocess="scale=1").samples
    assert sample["input"].dtype == np.uint8 and sample["input"][0, 0, 0, 0] == 200
    with raises_one_line("a.png", "input 'input' takes uint8", "scale=1"):
        read_calibration(tmp_path, spec, preprocess="mean=0.5")


# --- bad images and folders -------------------------------------------------------------

def test_wrong_size_names_the_file(tmp_path):
    save(tmp_path / "a.png", solid(8, 8))
    save(tmp_path / "b.png", solid(9, 8))
    with raises_one_line("b.png", "gives 1x3x9x8", "takes 1x3x8x8", "resize/crop"):
        read_calibration(tmp_path, SPECS, preprocess="scale=1")


def test_wrong_channels_and_layout_name_the_file(tmp_path):
    save(tmp_path / "a.png", solid(8, 8))
    with raises_one_line("a.png", "gives 1x1x8x8"):
        read_calibration(tmp_path, SPECS, preprocess="order=gray")
    with raises_one_line("a.png", "gives 1x8x8x3"):
        read_calibration(tmp_path, SPECS, preprocess="layout=nhwc")


def test_crop_larger_than_the_image_names_the_file(tmp_path):
    save(tmp_path / "small.png", solid(6, 6))
    with raises_one_line("small.png", "smaller than the 8x8 crop"):
        read_calibration(tmp_path, SPECS, preprocess="crop=8")


def test_corrupt_and_truncated_images_name_the_file(tmp_path):
    (tmp_path / "garbage.jpg").write_bytes(bytes(range(256)) * 4)
    with raises_one_line("garbage.jpg", "cannot decode it"):
        read_calibration(tmp_path / "garbage.jpg", SPECS, preprocess="crop=8")
    good = save(tmp_path / "good.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with raises_one_line("truncated.png", "cannot decode it"):
        read_calibration(truncated, SPECS, preprocess="crop=8")


def test_empty_folder_and_folder_without_supported_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with raises_one_line(str(empty), "is empty", ".npy", "png"):
        read_calibration(empty, SPECS, preprocess="scale=1")
    other = tmp_path / "other"
    other.mkdir()
    (other / "readme.txt").write_text("hi")
    (other / "train").mkdir()
    with raises_one_line(str(other), "holds no .npy or .npz files", "readme.txt",
                         "subfolders are not searched"):
        read_calibration(other, SPECS, preprocess="scale=1")


def test_mixed_folder_names_one_of_each(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((1, 3, 8, 8), dtype=np.float32))
    save(tmp_path / "b.png", solid(8, 8))
    with raises_one_line(str(tmp_path), "a.npy", "b.png", "one kind"):
        read_calibration(tmp_path, SPECS, preprocess="scale=1")


def test_images_without_preprocessing_say_to_pass_it(tmp_path):
    save(tmp_path / "a.png", solid(8, 8))
    with raises_one_line(str(tmp_path), "pass --preprocess", "resize="):
        read_calibration(tmp_path, SPECS)


def test_images_feed_one_input_only(tmp_path):
    save(tmp_path / "a.png", solid(8, 8))
    two = [*SPECS, ("mask", "float32", (1, 8))]
    with raises_one_line("one input", "input, mask"):
        read_calibration(tmp_path, two, preprocess="scale=1")


def test_non_finite_preprocessing_names_the_file(tmp_path):
    save(tmp_path / "a.png", solid(8, 8))
    with np.errstate(over="ignore"), raises_one_line("a.png", "contains Inf"):
        read_calibration(tmp_path, SPECS, preprocess="scale=1e38")


# --- preprocessing specs ----------------------------------------------------------------

IMAGENET = "resize=256,crop=224,mean=0.485:0.456:0.406,std=0.229:0.224:0.225,order=rgb,layout=nchw"


def test_spec_string_file_and_mapping_agree(tmp_path):
    from_text = parse_preprocess(IMAGENET)
    assert from_text == Preprocess(resize=256, crop=(224, 224), mean=(0.485, 0.456, 0.406),
                                   std=(0.229, 0.224, 0.225))
    keys = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225], "order": "rgb", "layout": "nchw"}
    (tmp_path / "pre.json").write_text(json.dumps(keys))
    (tmp_path / "pre.yaml").write_text(
        "resize: 256\ncrop: 224\nmean: [0.485, 0.456, 0.406]\nstd: [0.229, 0.224, 0.225]\n")
    assert parse_preprocess(tmp_path / "pre.json") == from_text
    assert parse_preprocess(str(tmp_path / "pre.yaml")) == from_text
    assert parse_preprocess(keys) == from_text
    assert parse_preprocess(from_text.to_spec()) == from_text      # the note's form reads back
    assert parse_preprocess("scale=1/255").scale == pytest.approx(1 / 255)
    assert parse_preprocess("resize=224x224").resize == (224, 224)
    assert parse_preprocess("resize=224x224").to_spec().startswith("resize=224x224,")


@pytest.mark.parametrize(("spec", "fragments"), [
    ("size=224", ["unknown key 'size'", "did you mean 'resize'", "known: resize, crop"]),
    ("resize=big", ["resize=big", "positive whole number"]),
    ("crop=0", ["crop=0", "positive whole number"]),
    ("crop=2x3x4", ["crop=2x3x4", "N or HxW"]),
    ("mean=0.485,0.456,0.406", ["'0.456' is not key=value", "separate mean/std values with ':'"]),
    ("mean=a:b:c", ["mean=a:b:c", "numbers separated by ':'"]),
    ("mean=0.1:0.2", ["mean has 2 values", "give 1 or 3"]),
    ("order=gray,std=0.2:0.2:0.2", ["std has 3 values", "give 1 or 1"]),
    ("std=0.2:0:0.2", ["std=0.2:0:0.2", "every std must be > 0"]),
    ("scale=1/0", ["scale=1/0", "positive number or fraction"]),
    ("order=rbg", ["order=rbg", "rgb, bgr, gray"]),
    ("layout=chw", ["layout=chw", "nchw, nhwc"]),
    ("interp=cubic", ["interp=cubic", "bilinear"]),
    ("crop=8,crop=9", ["'crop' given twice"]),
    ("imagenet", ["'imagenet'", "key=value pairs", ".json/.yaml"]),
    ("foo=1,layout=x", ["unknown key 'foo'", "layout=x"]),     # every problem at once
])
def test_malformed_specs_list_every_problem(spec, fragments):
    with raises_one_line("--preprocess", *fragments, error=PreprocessError):
        parse_preprocess(spec)


def test_malformed_spec_files(tmp_path):
    with raises_one_line("missing.yaml", "no such file", error=PreprocessError):
        parse_preprocess(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- resize\n- 256\n")
    with raises_one_line("list.yaml", "holds list, not a mapping", error=PreprocessError):
        parse_preprocess(tmp_path / "list.yaml")
    (tmp_path / "bad.json").write_text("{resize: 256")
    with raises_one_line("bad.json", "cannot read it", error=PreprocessError):
        parse_preprocess(tmp_path / "bad.json")
    (tmp_path / "typo.json").write_text('{"rezise": 256}')
    with raises_one_line("typo.json", "unknown key 'rezise'", error=PreprocessError):
        parse_preprocess(tmp_path / "typo.json")


# --- factories --------------------------------------------------------------------------

def test_factory_samples_are_cast_and_batched():
    found = read_calibration("calib_factories:three_without_batch_axis", SPECS)
    assert len(found.samples) == 3 and found.note == "factory calib_factories:three_without_batch_axis (3 samples)"
    assert all(s["input"].dtype == np.float32 and s["input"].shape == (1, 3, 8, 8)
               for s in found.samples)
    assert found.samples[2]["input"][0, 0, 0, 0] == 2


def test_factory_is_read_lazily(monkeypatch):
    import calib_factories

    found = read_calibration("calib_factories:endless", SPECS, limit=5)
    assert len(found.samples) == 5 and calib_factories.drawn == 5 and calib_factories.closed
    monkeypatch.setattr(calib_data, "DEFAULT_STREAM_SAMPLES", 7)
    assert len(read_calibration("calib_factories:endless", SPECS).samples) == 7


@pytest.mark.parametrize(("spec", "fragments"), [
    ("no_such_module_for_edgeopt:make", ["cannot import 'no_such_module_for_edgeopt'"]),
    ("calib_factories:missing", ["has no callable 'missing'"]),
    ("calib_factories:NOT_CALLABLE", ["has no callable 'NOT_CALLABLE'"]),
    ("calib_factories:raises", ["the factory raised RuntimeError", "unreachable"]),
    ("calib_factories:fails_midway", ["raised ValueError while giving sample 1", "bad record"]),
    ("calib_factories:one_dict", ["returned dict, not an iterable of input dicts"]),
    ("calib_factories:a_number", ["returned int, not an iterable"]),
    ("calib_factories:nothing", ["gave no samples"]),
    ("calib_factories:list_at_one", ["sample 1 is list, not a dict"]),
    ("calib_factories:wrong_name", ["sample 0", "no array for input(s) input",
                                    "unknown input(s) pixels"]),
    ("calib_factories:wrong_shape_at_one", ["sample 1 input 'input' has shape 1x3x9x9",
                                            "takes 1x3x8x8"]),
    ("calib_factories:int_input", ["sample 0 input 'input' is int64, the model takes float32"]),
    ("calib_factories:nan_at_two", ["sample 2 input 'input' contains NaN"]),
])
def test_bad_factories_name_the_sample(spec, fragments):
    with raises_one_line(f"calibration factory {spec}", *fragments):
        read_calibration(spec, SPECS)


def test_missing_path_that_is_no_factory_either(tmp_path):
    with raises_one_line(str(tmp_path / "nope"), "no such file or folder"):
        read_calibration(tmp_path / "nope", SPECS)
