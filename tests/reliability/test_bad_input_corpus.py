"""A table of bad inputs across every verb (issue 22): each gets its exit code and one line on
stderr, no traceback, nothing written, its inputs unchanged and no temporary file left.

The inputs are built once per module in ``inputs/``; every case runs in-process in a fresh
working folder with its own ``TMPDIR``, and ``{I}`` / ``{O}`` in its arguments stand for the
inputs folder and an output path that must not appear.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

FAST = ("--bench-iterations", "2", "--bench-seconds", "0", "--bench-repeats", "1",
        "--warmup", "1")
OPT = ("--quiet", "--calib", "random", *FAST)


# --- the inputs ---------------------------------------------------------------------------

def _onnx_inputs(folder: Path) -> None:
    import onnx
    import openvino as ov

    from tiny_models import save_tiny_onnx

    tiny = save_tiny_onnx(folder / "tiny.onnx")
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "garbage.onnx").write_bytes(bytes(range(256)) * 8)
    (folder / "notes.txt").write_text("not a model")
    model = onnx.load(str(tiny))
    model.opset_import[0].version = 99
    onnx.save(model, str(folder / "op99.onnx"))
    # external data that points outside the model's folder
    ext = folder / "ext" / "sub"
    ext.mkdir(parents=True)
    onnx.save(onnx.load(str(tiny)), str(ext / "m.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    (ext / "w.bin").rename(folder / "ext" / "w.bin")
    model = onnx.load(str(ext / "m.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../w.bin"
    onnx.save(model, str(ext / "m.onnx"))
    (folder / "bad.pt2").write_bytes(b"PK\x03\x04garbage" * 10)
    (folder / "bad.pt").write_bytes(b"\x80\x02garbage")
    xml = folder / "ir" / "m.xml"
    ov.save_model(ov.convert_model(str(tiny)), str(xml))
    xml.with_suffix(".bin").write_bytes(bytes(10))
    nobin = folder / "nobin" / "m.xml"
    nobin.parent.mkdir()
    shutil.copy(xml, nobin)


def _data_inputs(folder: Path) -> None:
    x = np.zeros((4, 3, 8, 8), np.float32)
    np.savez(folder / "object.npz", input=np.array([x[0], "x"], dtype=object))
    np.save(folder / "object.npy", np.array([x[0], "x"], dtype=object))
    np.savez(folder / "wrong-name.npz", image=x)
    np.savez(folder / "wrong-shape.npz", input=np.zeros((4, 3, 9, 9), np.float32))
    np.savez(folder / "wrong-dtype.npz", input=np.zeros((4, 3, 8, 8), np.int64))
    np.save(folder / "nan.npy", np.full((4, 3, 8, 8), np.nan, np.float32))
    (folder / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    (folder / "empty-data").mkdir()
    (folder / "inputs.npz").write_bytes(b"not a zip")


RECIPES = {
    "bad-yaml.yaml": "quant: [unclosed\n",
    "unknown-key.yaml": "quant:\n  calibrator: minmax\n  frobnicate: 1\n",
    "unknown-section.yaml": "nonsense:\n  a: 1\n",
    "bad-calibrator.yaml": "quant:\n  calibrator: nope\n",
    "bad-type.yaml": "quant:\n  max_accuracy_drop: lots\n",
    "list.yaml": "- 1\n- 2\n",
    "bad-bench.yaml": "bench:\n  min_iterations: -5\n",
}

DEVICES = {
    "devices-bad-yaml.yaml": "host-cpu: [unclosed\n",
    "devices-list.yaml": "- a\n- b\n",
    "devices-bad-precision.yaml": None,    # filled from the real file below
}


def _text_inputs(folder: Path) -> None:
    for name, text in RECIPES.items():
        (folder / name).write_text(text)
    from edgeopt.runtimes.devices import default_path

    real = Path(default_path()).read_text()
    (folder / "devices-bad-yaml.yaml").write_text(DEVICES["devices-bad-yaml.yaml"])
    (folder / "devices-list.yaml").write_text(DEVICES["devices-list.yaml"])
    assert "fp32" in real
    assert "precisions: [fp32, int8]" in real and "adapters: [ort-cpu, ov-cpu]" in real
    (folder / "devices-bad-precision.yaml").write_text(
        real.replace("precisions: [fp32, int8]", "precisions: [fp33, int8]", 1))
    (folder / "devices-bad-adapter.yaml").write_text(
        real.replace("adapters: [ort-cpu, ov-cpu]", "adapters: [ort-nope, ov-cpu]", 1))


def _zip(path: Path, members: list[tuple]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _bundle_inputs(folder: Path, run_cli) -> None:
    good = folder / "good.zip"
    assert run_cli("package", folder / "tiny.onnx", "--target", "linux-arm", "--out", good,
                   "--quiet").code == 0
    with zipfile.ZipFile(good) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    manifest = json.loads(members["manifest.json"])
    others = [(n, d) for n, d in members.items() if n != "manifest.json"]

    def with_manifest(name: str, **changes) -> None:
        _zip(folder / name, [("manifest.json", json.dumps({**manifest, **changes})), *others])

    (folder / "notzip.zip").write_bytes(b"hello")
    _zip(folder / "nomanifest.zip", others)
    _zip(folder / "badjson.zip", [("manifest.json", "{not json"), *others])
    with_manifest("schema9.zip", schema_version=9)
    with_manifest("tolerance-huge.zip", tolerance="huge")
    with_manifest("tolerance-field.zip", tolerance={"outputs": {"y": {"max_abs_diff": "big",
                                                                       "min_cosine": 1}}})
    with_manifest("inputs-not-list.zip", inputs="x")
    with_manifest("samples-bad.zip", reference={**manifest["reference"], "samples": "x"})
    with_manifest("runtime-nope.zip", model={**manifest["model"], "runtime": "nope"})
    with_manifest("model-entry.zip", model={**manifest["model"], "file": "other.onnx"})
    _zip(folder / "dotdot.zip", [("manifest.json", members["manifest.json"]), *others,
                                 ("../evil.txt", b"x")])
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    _zip(folder / "symlink.zip", [("manifest.json", members["manifest.json"]), *others,
                                  (link, "/etc/passwd")])
    _zip(folder / "unlisted.zip", [("manifest.json", members["manifest.json"]), *others,
                                   ("payload.so", b"\x7fELF")])
    altered = [(n, d[:-1] + bytes([d[-1] ^ 1]) if n == "model.onnx" else d) for n, d in others]
    _zip(folder / "altered.zip", [("manifest.json", members["manifest.json"]), *altered])
    files = {**manifest["files"], "model.onnx": {**manifest["files"]["model.onnx"],
                                                 "size": 1}}
    with_manifest("size-lie.zip", files=files)
    _zip(folder / "big-manifest.zip", [("manifest.json", b" " * (2 << 20)), *others])
    _zip(folder / "missing-member.zip", [("manifest.json", members["manifest.json"]),
                                         *[(n, d) for n, d in others if n != "model.onnx"]])


def _run_inputs(folder: Path, run_cli) -> None:
    run = folder / "run"
    assert run_cli("optimize", folder / "tiny.onnx", "--out", run, "--runtime",
                   "onnxruntime", *OPT).code == 0
    report = json.loads((run / "report.json").read_text())

    def variant(name: str, change) -> None:
        copy = folder / name
        shutil.copytree(run, copy)
        data = json.loads(json.dumps(report))
        change(data, copy)
        (copy / "report.json").write_text(json.dumps(data))

    def int8(data) -> dict:
        return next(a for a in data["artifacts"] if a["precision"] == "int8")

    def etc_passwd(data, _):
        int8(data).update(path="/etc/passwd", files=["/etc/passwd"])

    def no_precision(data, _):
        for a in data["artifacts"]:
            a.pop("precision")

    def outside(data, copy):
        elsewhere = folder / "elsewhere"
        elsewhere.mkdir(exist_ok=True)
        shutil.copy(run / "tiny.fp32.onnx", elsewhere / "m.onnx")
        a = int8(data)
        a.update(path="../elsewhere/m.onnx", files=["../elsewhere/m.onnx"])
        a.pop("sha256_files", None)
        a.pop("sha256", None)

    def no_checksum(data, _):
        a = int8(data)
        a.pop("sha256_files", None)
        a.pop("sha256", None)

    def altered(_data, copy):
        path = copy / "tiny.int8-ort.onnx"
        path.write_bytes(path.read_bytes() + b"\x00")

    def schema(data, _):
        data["schema_version"] = 99

    for name, change in [("run-etc-passwd", etc_passwd), ("run-no-precision", no_precision),
                         ("run-outside", outside), ("run-no-checksum", no_checksum),
                         ("run-altered", altered), ("run-schema", schema)]:
        variant(name, change)
    (folder / "run-badjson").mkdir()
    (folder / "run-badjson" / "report.json").write_text("{")
    (folder / "run-empty").mkdir()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    from edgeopt.cli import main

    def run_cli(*args):
        class R:
            pass

        r = R()
        r.code = main([str(a) for a in args])
        return r

    folder = tmp_path_factory.mktemp("inputs")
    _onnx_inputs(folder)
    _data_inputs(folder)
    _text_inputs(folder)
    _bundle_inputs(folder, run_cli)
    _run_inputs(folder, run_cli)
    return folder


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() and not p.is_symlink() else "dir"
            for p in sorted(folder.rglob("*"))}


# --- the cases ----------------------------------------------------------------------------
# (id, argv, exit code, a fragment of the one line[, env])

OPTIMIZE = [
    ("missing-model", ["optimize", "{I}/nope.onnx"], 2, "no such file"),
    ("empty-model", ["optimize", "{I}/empty.onnx"], 2, "empty"),
    ("garbage-model", ["optimize", "{I}/garbage.onnx"], 2, "garbage.onnx"),
    ("opset-99", ["optimize", "{I}/op99.onnx"], 2, "opset"),
    ("ext-data-outside", ["optimize", "{I}/ext/sub/m.onnx"], 2, "m.onnx"),
    ("bad-pt2", ["optimize", "{I}/bad.pt2", "--input-shape", "1,3,8,8"], 2, "ExportedProgram"),
    ("bad-pt", ["optimize", "{I}/bad.pt", "--input-shape", "1,3,8,8"], 2, "bad.pt"),
    ("text-model", ["optimize", "{I}/notes.txt"], 2, "notes.txt"),
    ("folder-model", ["optimize", "{I}/empty-data"], 2, "empty-data"),
    ("no-model", ["optimize"], 2, "no model"),
    ("unknown-ref", ["optimize", "ref:nope"], 2, "nope"),
    ("missing-module", ["optimize", "no_such_module_xyz:factory", "--input-shape", "1,3,8,8"],
     2, "no_such_module_xyz"),
    ("not-a-module", ["optimize", "tiny_models:not_a_module", "--input-shape", "1,3,8,8"], 2,
     "not_a_module"),
    ("shape-x", ["optimize", "{I}/tiny.onnx", "--input-shape", "1,x,8"], 2, "--input-shape"),
    ("shape-zero", ["optimize", "{I}/tiny.onnx", "--input-shape", "0,3,8,8"], 2, "positive"),
    ("shape-misfit", ["optimize", "{I}/tiny.onnx", "--input-shape", "1,3,9,9"], 2,
     "--input-shape"),
    ("shape-names", ["optimize", "{I}/tiny.onnx", "--input-shape", "=1,3"], 2, "--input-shape"),
    ("shape-empty", ["optimize", "{I}/tiny.onnx", "--input-shape", ""], 2, "--input-shape"),
    ("calib-missing", ["optimize", "{I}/tiny.onnx", "--calib", "{I}/nope.npz"], 2, "nope.npz"),
    ("calib-object-npz", ["optimize", "{I}/tiny.onnx", "--calib", "{I}/object.npz"], 2,
     "object.npz"),
    ("calib-object-npy", ["optimize", "{I}/tiny.onnx", "--calib", "{I}/object.npy"], 2,
     "object.npy"),
    ("calib-wrong-name", ["optimize", "{I}/tiny.onnx", "--calib", "{I}/wrong-name.npz"], 2,
     "no array for input"),
    ("calib-wrong-shape", ["optimize", "{I}/tiny.onnx", "--calib", "{I}/wrong-shape.npz"], 2,
     "wrong-shape.npz"),
    ("calib-wrong-dtype", ["optimize", "{I}/tiny.onnx", "--calib", "{I}/wrong-dtype.npz"], 2,
     "int64"),
    ("calib-nan", ["optimize", "{I}/tiny.onnx", "--calib", "{I}/nan.npy"], 2, "nan.npy"),
    ("calib-garbage", ["optimize", "{I}/tiny.onnx", "--calib", "{I}/garbage.npy"], 2,
     "garbage.npy"),
    ("calib-empty-folder", ["optimize", "{I}/tiny.onnx", "--calib", "{I}/empty-data"], 2,
     "empty-data"),
    ("calib-not-zip-npz", ["optimize", "{I}/tiny.onnx", "--calib", "{I}/inputs.npz"], 2,
     "inputs.npz"),
    ("calib-samples-0", ["optimize", "{I}/tiny.onnx", "--calib-samples", "0"], 2,
     "calib"),
    ("calib-samples-neg", ["optimize", "{I}/tiny.onnx", "--calib-samples", "-1"], 2, "calib"),
    ("eval-samples-0", ["optimize", "{I}/tiny.onnx", "--eval-samples", "0"], 2, "eval"),
    ("device-unknown", ["optimize", "{I}/tiny.onnx", "--device", "rpi6"], 2, "rpi6"),
    ("device-unit-unknown", ["optimize", "{I}/tiny.onnx", "--device", "host-cpu:nope"], 2,
     "nope"),
    ("require-measured", ["optimize", "{I}/tiny.onnx", "--device", "rpi5",
                          "--require-measured"], 2, "--require-measured"),
    ("recipe-missing", ["optimize", "{I}/tiny.onnx", "--recipe", "{I}/nope.yaml"], 2,
     "nope.yaml"),
    *[(f"recipe-{name[:-5]}", ["optimize", "{I}/tiny.onnx", "--recipe", f"{{I}}/{name}"], 2,
       name) for name in RECIPES],
    ("calibrator-nope", ["optimize", "{I}/tiny.onnx", "--calibrator", "nope"], 2, "nope"),
    ("drop-text", ["optimize", "{I}/tiny.onnx", "--max-accuracy-drop", "abc"], 2, "abc"),
    ("drop-negative", ["optimize", "{I}/tiny.onnx", "--max-accuracy-drop", "-1"], 2,
     "accuracy"),
    ("opt-bench-iterations-0", ["optimize", "{I}/tiny.onnx", "--bench-iterations", "0"], 2,
     "iteration"),
    ("bench-seconds-neg", ["optimize", "{I}/tiny.onnx", "--bench-seconds", "-1"], 2,
     "second"),
    ("warmup-neg", ["optimize", "{I}/tiny.onnx", "--warmup", "-1"], 2, "warm"),
    ("threads-0", ["optimize", "{I}/tiny.onnx", "--threads", "0"], 2, "thread"),
    ("palettize-1", ["optimize", "{I}/tiny.onnx", "--palettize", "1"], 2, "palettize"),
    ("group-size-0", ["optimize", "{I}/tiny.onnx", "--palettize", "4", "--group-size", "0"],
     2, "group"),
    ("qat-epochs-neg", ["optimize", "{I}/tiny.onnx", "--qat-epochs", "-1"], 2, "qat"),
    ("fp32-nodes-neg", ["optimize", "{I}/tiny.onnx", "--max-fp32-nodes", "-1"], 2, "fp32"),
    ("preprocess-garbage", ["optimize", "{I}/tiny.onnx", "--preprocess", "garbage=1"], 2,
     "preprocess"),
    ("package-unknown", ["optimize", "{I}/tiny.onnx", "--package", "nope"], 2, "nope"),
    ("runtime-unknown", ["optimize", "{I}/tiny.onnx", "--runtime", "nope"], 2, "nope"),
    ("flag-unknown", ["optimize", "{I}/tiny.onnx", "--frobnicate"], 2, "frobnicate"),
    ("prune-flag-without-mode", ["optimize", "{I}/tiny.onnx", "--prune-ratio", "0.5"], 2,
     "--prune-mode"),
    ("out-is-file", ["optimize", "{I}/tiny.onnx", "--out", "{I}/notes.txt"], 2, "not a folder"),
    ("out-is-model", ["optimize", "{I}/tiny.onnx", "--out", "{I}/tiny.onnx"], 2, "input"),
    ("out-under-file", ["optimize", "{I}/tiny.onnx", "--out", "{I}/notes.txt/sub"], 2,
     "notes.txt"),
    ("out-unwritable", ["optimize", "{I}/tiny.onnx", "--out", "/proc/edgeopt-out"], 2,
     "/proc"),
    ("out-previous-run", ["optimize", "{I}/tiny.onnx", "--out", "{I}/run"], 2, "--overwrite"),
    ("out-overwrite-not-a-run", ["optimize", "{I}/tiny.onnx", "--out", "{I}/ext",
                                 "--overwrite"], 2, "not an edgeopt run"),
]

PRUNE = [
    ("prune-onnx", ["prune", "{I}/tiny.onnx", "--prune-mode", "magnitude-global"], 2,
     "tiny.onnx"),
    ("prune-no-mode", ["prune", "tiny_models:tiny_cnn", "--input-shape", "1,3,8,8"], 2,
     "--prune-mode"),
    ("prune-unknown-ref", ["prune", "ref:nope", "--prune-mode", "magnitude-global"], 2, "nope"),
    ("prune-ratio-big", ["prune", "tiny_models:tiny_cnn", "--input-shape", "1,3,8,8",
                         "--prune-mode", "magnitude-global", "--prune-ratio", "1.5"], 2,
     "ratio"),
    ("prune-mode-nope", ["prune", "tiny_models:tiny_cnn", "--input-shape", "1,3,8,8",
                         "--prune-mode", "nope"], 2, "nope"),
    ("prune-epochs-neg", ["prune", "tiny_models:tiny_cnn", "--input-shape", "1,3,8,8",
                          "--prune-mode", "magnitude-global", "--epochs", "-1"], 2, "epochs"),
    ("prune-finetune-missing", ["prune", "tiny_models:tiny_cnn", "--input-shape", "1,3,8,8",
                                "--prune-mode", "magnitude-global", "--epochs", "1",
                                "--finetune-data", "{I}/nope"], 2, "nope"),
    ("prune-recipe-bad", ["prune", "tiny_models:tiny_cnn", "--input-shape", "1,3,8,8",
                          "--recipe", "{I}/bad-yaml.yaml"], 2, "bad-yaml.yaml"),
]

BENCH = [
    ("bench-missing", ["bench", "{I}/nope.onnx"], 2, "no such file"),
    ("bench-text", ["bench", "{I}/notes.txt"], 2, "notes.txt"),
    ("bench-empty", ["bench", "{I}/empty.onnx"], 2, "empty"),
    ("bench-garbage", ["bench", "{I}/garbage.onnx", "--runtime", "onnxruntime"], 2,
     "garbage.onnx"),
    ("bench-opset-99", ["bench", "{I}/op99.onnx", "--runtime", "onnxruntime"], 2, "opset"),
    ("bench-shape-zero", ["bench", "{I}/tiny.onnx", "--input-shape", "0,1,8,8"], 2,
     "positive"),
    ("bench-shape-huge", ["bench", "{I}/tiny.onnx", "--input-shape", "100000,1,8000,8000"], 2,
     "does not fit"),
    ("bench-shape-x", ["bench", "{I}/tiny.onnx", "--input-shape", "1,x,8"], 2, "integers"),
    ("bench-device", ["bench", "{I}/tiny.onnx", "--device", "rpi6"], 2, "rpi6"),
    ("bench-iterations-0", ["bench", "{I}/tiny.onnx", "--bench-iterations", "0"], 2,
     "iteration"),
    ("bench-threads-neg", ["bench", "{I}/tiny.onnx", "--threads", "-1"], 2, "thread"),
    ("bench-bad-bin", ["bench", "{I}/ir/m.xml"], 2, "Incorrect weights"),
    ("bench-no-bin", ["bench", "{I}/nobin/m.xml"], 2, "m.bin"),
    ("bench-zip-flags", ["bench", "{I}/good.zip", "--input-shape", "1,3,8,8"], 2,
     "do not apply"),
    ("bench-notzip", ["bench", "{I}/notzip.zip"], 2, "not a zip"),
    ("bench-require-measured", ["bench", "{I}/tiny.onnx", "--device", "rpi5",
                                "--require-measured", "--runtime", "onnxruntime"], 2,
     "--require-measured"),
    ("bench-devices-bad-yaml", ["bench", "{I}/tiny.onnx"], 2, "devices-bad-yaml.yaml",
     {"EDGEOPT_DEVICES": "{I}/devices-bad-yaml.yaml"}),
    ("bench-devices-missing", ["bench", "{I}/tiny.onnx"], 2, "nope-devices.yaml",
     {"EDGEOPT_DEVICES": "{I}/nope-devices.yaml"}),
    ("bench-devices-precision", ["bench", "{I}/tiny.onnx"], 2, "fp33",
     {"EDGEOPT_DEVICES": "{I}/devices-bad-precision.yaml"}),
    ("bench-devices-adapter", ["bench", "{I}/tiny.onnx"], 2, "ort-nope",
     {"EDGEOPT_DEVICES": "{I}/devices-bad-adapter.yaml"}),
]

DEVICES_CASES = [
    ("devices-show-unknown", ["devices", "show", "rpi6"], 2, "rpi6"),
    ("devices-list-bad-yaml", ["devices", "list"], 2, "devices-bad-yaml.yaml",
     {"EDGEOPT_DEVICES": "{I}/devices-bad-yaml.yaml"}),
    ("devices-list-not-mapping", ["devices", "list"], 2, "devices-list.yaml",
     {"EDGEOPT_DEVICES": "{I}/devices-list.yaml"}),
    ("devices-optimize-bad", ["optimize", "{I}/tiny.onnx"], 2, "fp33",
     {"EDGEOPT_DEVICES": "{I}/devices-bad-precision.yaml"}),
    ("devices-verb-unknown", ["devices", "nope"], 2, "nope"),
]

PACKAGE = [
    ("package-missing", ["package", "{I}/nope.onnx", "--target", "linux-arm"], 2, "nope.onnx"),
    ("package-garbage", ["package", "{I}/garbage.onnx", "--target", "linux-arm"], 2,
     "not a readable ONNX model"),
    ("package-ext-outside", ["package", "{I}/ext/sub/m.onnx", "--target", "linux-arm"], 2,
     "outside"),
    ("package-empty", ["package", "{I}/empty.onnx", "--target", "linux-arm"], 2, "empty.onnx"),
    ("package-out-not-zip", ["package", "{I}/tiny.onnx", "--target", "linux-arm", "--out",
                             "{O}.tar"], 2, ".zip"),
    ("package-out-folder", ["package", "{I}/tiny.onnx", "--target", "linux-arm", "--out",
                            "{I}/empty-data"], 2, "folder"),
    ("package-out-unwritable", ["package", "{I}/tiny.onnx", "--target", "linux-arm", "--out",
                                "/proc/b.zip"], 2, "cannot be written"),
    ("package-palettize-1", ["package", "{I}/tiny.onnx", "--target", "linux-arm",
                             "--palettize", "1"], 2, "bits"),
    ("package-group-size-0", ["package", "{I}/tiny.onnx", "--target", "linux-arm",
                              "--palettize", "4", "--group-size", "0"], 2, "group-size"),
    ("package-group-alone", ["package", "{I}/tiny.onnx", "--target", "linux-arm",
                             "--group-size", "2"], 2, "--palettize"),
    ("package-precision-file", ["package", "{I}/tiny.onnx", "--target", "linux-arm",
                                "--precision", "int8"], 2, "--precision"),
    ("package-target-nope", ["package", "{I}/tiny.onnx", "--target", "nope"], 2, "nope"),
    ("package-etc-passwd", ["package", "{I}/run-etc-passwd", "--target", "linux-arm"], 2,
     "outside the run folder"),
    ("package-no-precision", ["package", "{I}/run-no-precision", "--target", "linux-arm"], 2,
     "precision"),
    ("package-outside", ["package", "{I}/run-outside", "--target", "linux-arm"], 2,
     "outside the run folder"),
    ("package-no-checksum", ["package", "{I}/run-no-checksum", "--target", "linux-arm"], 2,
     "no sha256"),
    ("package-altered", ["package", "{I}/run-altered", "--target", "linux-arm"], 2,
     "sha256 differs"),
    ("package-schema", ["package", "{I}/run-schema", "--target", "linux-arm"], 2,
     "schema_version"),
    ("package-badjson", ["package", "{I}/run-badjson", "--target", "linux-arm"], 2,
     "not a readable report"),
    ("package-no-report", ["package", "{I}/run-empty", "--target", "linux-arm"], 2,
     "no report.json"),
    ("package-no-runtime", ["package", "{I}/run", "--target", "openvino"], 2, "openvino"),
]

VERIFY = [
    ("verify-missing", ["verify", "{I}/nope.zip", "--no-bench"], 2, "no such bundle"),
    ("verify-notzip", ["verify", "{I}/notzip.zip", "--no-bench"], 2, "not a zip"),
    ("verify-nomanifest", ["verify", "{I}/nomanifest.zip", "--no-bench"], 2, "no manifest"),
    ("verify-badjson", ["verify", "{I}/badjson.zip", "--no-bench"], 2, "not valid JSON"),
    ("verify-schema", ["verify", "{I}/schema9.zip", "--no-bench"], 2, "schema_version"),
    ("verify-tolerance-huge", ["verify", "{I}/tolerance-huge.zip", "--no-bench"], 2,
     "tolerance"),
    ("verify-tolerance-field", ["verify", "{I}/tolerance-field.zip", "--no-bench"], 2,
     "max_abs_diff"),
    ("verify-inputs", ["verify", "{I}/inputs-not-list.zip", "--no-bench"], 2, "inputs"),
    ("verify-samples", ["verify", "{I}/samples-bad.zip", "--no-bench"], 2, "samples"),
    ("verify-runtime", ["verify", "{I}/runtime-nope.zip", "--no-bench"], 2, "nope"),
    ("verify-model-entry", ["verify", "{I}/model-entry.zip", "--no-bench"], 1, "model entry"),
    ("verify-dotdot", ["verify", "{I}/dotdot.zip", "--no-bench"], 1, "'..'"),
    ("verify-symlink", ["verify", "{I}/symlink.zip", "--no-bench"], 1, "symbolic link"),
    ("verify-unlisted", ["verify", "{I}/unlisted.zip", "--no-bench"], 1, "payload.so"),
    ("verify-altered", ["verify", "{I}/altered.zip", "--no-bench"], 1, "checksum"),
    ("verify-size-lie", ["verify", "{I}/size-lie.zip", "--no-bench"], 1, "size"),
    ("verify-big-manifest", ["verify", "{I}/big-manifest.zip", "--no-bench"], 1, "limit"),
    ("verify-missing-member", ["verify", "{I}/missing-member.zip", "--no-bench"], 1,
     "missing"),
    ("verify-device", ["verify", "{I}/good.zip", "--no-bench", "--device", "rpi6"], 2, "rpi6"),
    ("verify-bench-flags", ["verify", "{I}/good.zip", "--bench-iterations", "0"], 2,
     "iteration"),
]

RUN = [
    ("run-missing-model", ["run", "{I}/nope.onnx", "--inputs", "{I}/object.npz", "--out",
                           "{O}.npz"], 2, "nope.onnx"),
    ("run-inputs-missing", ["run", "{I}/tiny.onnx", "--inputs", "{I}/nope.npz", "--out",
                            "{O}.npz"], 2, "nope.npz"),
    ("run-inputs-object", ["run", "{I}/tiny.onnx", "--inputs", "{I}/object.npz", "--out",
                           "{O}.npz"], 2, "object.npz"),
    ("run-inputs-wrong-name", ["run", "{I}/tiny.onnx", "--inputs", "{I}/wrong-name.npz",
                               "--out", "{O}.npz"], 2, "input"),
]

CASES = OPTIMIZE + PRUNE + BENCH + DEVICES_CASES + PACKAGE + VERIFY + RUN


def test_the_corpus_is_large_and_covers_every_verb():
    assert len(CASES) >= 100
    assert len({c[0] for c in CASES}) == len(CASES)
    verbs = {c[1][0] for c in CASES}
    assert verbs >= {"optimize", "prune", "bench", "devices", "package", "verify", "run"}


def _argv(args: list[str], inputs: Path, out: Path) -> list[str]:
    return [a.replace("{I}", str(inputs)).replace("{O}", str(out)) for a in args]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, inputs, run_cli, tmp_path, monkeypatch):
    import tempfile

    name, args, code, fragment, *env = case
    work, temp = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    temp.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    for key, value in (env[0] if env else {}).items():
        monkeypatch.setenv(key, value.replace("{I}", str(inputs)))
    out = tmp_path / "out"
    argv = _argv(args, inputs, out)
    verb, given = argv[0], argv[1:]
    defaults = []                 # before the case's own flags: argparse keeps the last
    if verb in ("optimize", "prune") and "--out" not in argv and len(argv) > 1:
        defaults += ["--out", str(out)]
    if verb == "package" and "--out" not in argv:
        defaults += ["--out", f"{out}.zip"]
    if verb in ("optimize", "prune"):
        defaults += ["--quiet"]
    if verb == "optimize":
        defaults += [*FAST, "--calib", "random"]
    argv = [verb, *defaults, *given]
    before = _fingerprint(inputs)
    result = run_cli(*argv)
    assert result.code == code, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err and "internal error" not in result.err
    assert lines[0].startswith(("edgeopt: error: ", "edgeopt: verify failed: ",
                                "edgeopt ")), lines[0]
    assert fragment in lines[0], (fragment, lines[0])
    assert _fingerprint(inputs) == before                   # inputs unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "tmp"]   # nothing written
    assert list(work.iterdir()) == []
    assert list(temp.iterdir()) == []                       # no temporary file left


def test_a_bad_pt2_prints_no_torch_log_or_traceback(inputs, tmp_path):
    """In a fresh process, where torch's own logging is configured as a user would have it."""
    proc = subprocess.run([sys.executable, "-m", "edgeopt", "optimize", str(inputs / "bad.pt2"),
                           "--input-shape", "1,3,8,8", "--out", str(tmp_path / "o"),
                           "--calib", "random", "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ExportedProgram" in lines[0], proc.stderr
    assert not (tmp_path / "o").exists()
