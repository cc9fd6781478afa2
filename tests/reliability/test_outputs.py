"""One writer per output, nothing stale left, byte-identical bundles (issue 22, items 5, 6, 8)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

FAST_BENCH = ("--bench-iterations", "3", "--bench-seconds", "0", "--bench-repeats", "1",
              "--warmup", "1")
TINY = ("--calib", "random", "--runtime", "onnxruntime", "--quiet", *FAST_BENCH)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _edgeopt(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeopt", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_a_second_concurrent_optimize_into_the_same_out_exits_2_naming_the_holder(
        run_cli, tiny_onnx, tmp_path):
    out = tmp_path / "out"
    # the first run benchmarks for a few seconds, holding --out meanwhile
    first = _edgeopt("optimize", tiny_onnx, "--out", out, "--calib", "random", "--runtime",
                     "onnxruntime", "--quiet", "--json", "--bench-seconds", "4",
                     "--bench-iterations", "3", "--bench-repeats", "1", "--warmup", "1")
    lock = out / ".edgeopt.lock"
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text().strip()) and first.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    assert first.poll() is None, first.communicate()
    second = run_cli("optimize", tiny_onnx, "--out", out, *TINY)
    assert second.code == 2
    lines = second.err.strip().splitlines()
    assert len(lines) == 1 and f"pid {first.pid}" in lines[0], second.err
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    report = json.loads(stdout)
    assert {p.name for p in out.iterdir()} == {a["path"] for a in report["artifacts"]} | {
        "report.json", "report.md", "recipe.yaml"}


def test_a_held_lock_refuses_and_a_released_one_is_gone(run_cli, tiny_onnx, tmp_path):
    from edgeopt._outdir import OutputLock

    out = tmp_path / "out"
    out.mkdir()
    lock = OutputLock(out)
    lock.acquire()
    try:
        result = run_cli("optimize", tiny_onnx, "--out", out, *TINY)
    finally:
        lock.release()
    assert result.code == 2 and f"pid {os.getpid()}" in result.err
    assert list(out.iterdir()) == []
    assert run_cli("optimize", tiny_onnx, "--out", out, *TINY).code == 0
    assert not (out / ".edgeopt.lock").exists()


def test_a_previous_run_is_refused_without_overwrite_and_replaced_whole_with_it(
        run_cli, tiny_onnx, tmp_path):
    out = tmp_path / "out"
    assert run_cli("optimize", tiny_onnx, "--out", out, *TINY).code == 0
    stale = out / "older.int8-ort.onnx"          # an older run's artifact
    stale.write_bytes(b"old")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run_cli("optimize", tiny_onnx, "--out", out, *TINY)
    assert again.code == 2 and "--overwrite" in again.err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    result = run_cli("optimize", tiny_onnx, "--out", out, *TINY, "--overwrite")
    assert result.code == 0, result.err
    report = json.loads((out / "report.json").read_text())
    assert not stale.exists()                    # replaced whole: no merging
    assert {p.name for p in out.iterdir()} == {a["path"] for a in report["artifacts"]} | {
        "report.json", "report.md", "recipe.yaml"}


def test_overwrite_never_removes_a_folder_that_is_not_a_run(run_cli, tiny_onnx, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = run_cli("optimize", tiny_onnx, "--out", out, *TINY, "--overwrite")
    assert result.code == 2 and "not an edgeopt run" in result.err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_overwrite_is_not_part_of_the_recipe(run_cli, tiny_onnx, tmp_path):
    out = tmp_path / "out"
    assert run_cli("optimize", tiny_onnx, "--out", out, *TINY, "--overwrite").code == 0
    import yaml

    def keys(node):
        if isinstance(node, dict):
            return set(node) | {k for v in node.values() for k in keys(v)}
        return set()

    assert "overwrite" not in keys(yaml.safe_load((out / "recipe.yaml").read_text()))


def test_stale_staging_and_temp_folders_of_dead_processes_are_removed(
        run_cli, tiny_onnx, tmp_path, monkeypatch):
    import tempfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    dead = _dead_pid()
    out = tmp_path / "out"
    out.mkdir()
    (out / f".edgeopt-partial-{dead}-abc" / "scratch").mkdir(parents=True)
    (out / f".edgeopt-partial-{dead}-abc" / "m.onnx").write_bytes(b"x" * 1000)
    live = out / f".edgeopt-partial-{os.getpid()}-live"      # a live process's: kept
    live.mkdir()
    (temp / f"edgeopt-{dead}-xyz" / "edgeopt-bench-1").mkdir(parents=True)
    (temp / f"edgeopt-{os.getpid() + 0}-mine").mkdir()
    result = run_cli("optimize", tiny_onnx, "--out", out, *TINY)
    assert result.code == 0, result.err
    names = {p.name for p in out.iterdir()}
    assert f".edgeopt-partial-{dead}-abc" not in names and live.name in names
    assert sorted(p.name for p in temp.iterdir()) == [f"edgeopt-{os.getpid()}-mine"]


def test_an_interrupted_overwrite_is_undone_at_the_next_start(tmp_path):
    from edgeopt._outdir import clean_stale

    dead = _dead_pid()
    out = tmp_path / "out"
    old = out / f".edgeopt-old-{dead}-x"
    old.mkdir(parents=True)
    (old / "report.json").write_text("old report")
    (old / "m.onnx").write_text("old model")
    (out / "m.onnx").write_text("new, half committed")
    (out / f".edgeopt-committing-{dead}-y").write_text(json.dumps(
        {"new": ["m.onnx", "extra.onnx", "report.json"], "old": ["m.onnx", "report.json"]}))
    (out / "extra.onnx").write_text("new, no previous file of that name")
    clean_stale(out)
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "report.json": "old report", "m.onnx": "old model"}


def test_temp_folders_are_removed_after_a_command(run_cli, tiny_onnx, tmp_path, monkeypatch):
    import tempfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert run_cli("package", tiny_onnx, "--target", "linux-arm", "--out",
                   tmp_path / "b.zip", "--quiet").code == 0
    assert run_cli("bench", tiny_onnx, "--runtime", "onnxruntime", *FAST_BENCH).code == 0
    assert list(temp.iterdir()) == []
    assert os.environ["TMPDIR"] == str(temp)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_digits_bundles(tmp_path_factory) -> list[Path]:
    from edgeopt.cli import main

    bundles = []
    for run in ("a", "b"):
        out = tmp_path_factory.mktemp("digits") / run
        assert main(["optimize", "ref:digits-cnn", "--out", str(out), "--quiet", "--json",
                     "--runtime", "onnxruntime", "--package", "android", *FAST_BENCH]) == 0
        bundles.append(out / "digits-cnn-android.zip")
    return bundles


def test_two_optimize_package_runs_give_the_same_bundle_sha256(two_digits_bundles):
    a, b = two_digits_bundles
    print(f"bundle sha256: {_sha256(a)} {_sha256(b)}")
    assert _sha256(a) == _sha256(b)
    latency = [json.loads(p.with_name("digits-cnn-android.latency.json").read_text())
               for p in (a, b)]
    assert [x["bundle_sha256"] for x in latency] == [_sha256(a), _sha256(b)]
    assert all(x["latency"] and x["latency"][0]["label"] == "measured" for x in latency)


def test_the_bundle_manifest_holds_no_timing(two_digits_bundles):
    import zipfile

    with zipfile.ZipFile(two_digits_bundles[0]) as zf:
        text = zf.read("manifest.json").decode()
    assert "p50_ms" not in text and "_ms" not in text
