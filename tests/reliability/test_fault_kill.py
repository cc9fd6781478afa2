"""SIGKILL `optimize` at several points: `--out` is absent or complete, and the next run
cleans up what the killed one left (issue 22, items 5 and 6)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = ("--calib", "random", "--runtime", "onnxruntime", "--quiet", "--json",
        "--bench-iterations", "3", "--bench-seconds", "0.5", "--bench-repeats", "2", "--warmup", "1")


def _staged(out: Path, pattern: str) -> bool:
    return any(p.name.startswith(".edgeopt-partial-") and any(p.glob(pattern))
               for p in out.iterdir()) if out.is_dir() else False


POINTS = {
    "locked": lambda out: (out / ".edgeopt.lock").is_file(),
    "fp32-staged": lambda out: _staged(out, "*.fp32.onnx"),
    "int8-staged": lambda out: _staged(out, "*.int8-ort.onnx"),
}

# Runs edgeopt with os.replace in edgeopt._outdir killing the process after N renames: a
# SIGKILL in the middle of a commit, at a known point.
KILL_AFTER = """
import os, signal, sys
import edgeopt._outdir as outdir
real, count = os.replace, [0]
def replace(src, dst):
    if os.path.dirname(src) != os.path.dirname(dst):     # a commit's move, not a temp rename
        if count[0] == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)
        count[0] += 1
    real(src, dst)
outdir.os = type(os)("os_with_kill")
outdir.os.__dict__.update(os.__dict__)
outdir.os.replace = replace
from edgeopt.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _visible(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if not p.name.startswith(".")} if out.is_dir() else set()


def _assert_absent_or_complete(out: Path) -> None:
    files = _visible(out)
    if not files:
        return
    assert "report.json" in files, files
    report = json.loads((out / "report.json").read_text())
    listed = {f for a in report["artifacts"] for f in (a.get("files") or [a["path"]])}
    assert files == listed | {"report.json", "report.md", "recipe.yaml"}
    for a in report["artifacts"]:
        for name, digest in (a.get("sha256_files") or {}).items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("renames, previous", [(0, False), (3, False), (3, True), (7, True)])
def test_killed_in_the_middle_of_a_commit(tiny_onnx, tmp_path, renames, previous):
    """Killed after ``renames`` renames of the commit (with a previous run: the first ones
    move its files aside): the next start puts back the previous run or leaves nothing."""
    out, temp = tmp_path / "out", tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    cmd = [sys.executable, "-m", "edgeopt", "optimize", str(tiny_onnx), "--out", str(out), *ARGS]
    if previous:
        assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()} if previous else {}
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER, str(renames), *cmd[3:],
                             *(["--overwrite"] if previous else [])],
                            env=env, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert any(p.name.startswith(".edgeopt-committing-") for p in out.iterdir())
    from edgeopt._outdir import clean_stale

    clean_stale(out)
    after = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert after == {k: v for k, v in before.items() if not k.startswith(".")}
    assert not [p.name for p in out.iterdir() if p.name.startswith(".edgeopt-")]
    _assert_absent_or_complete(out)


@pytest.mark.parametrize("point", [*POINTS, "after-0.3s"])
def test_killed_optimize_leaves_out_absent_or_complete_and_the_next_run_cleans_up(
        tiny_onnx, tmp_path, point):
    out, temp = tmp_path / "out", tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    cmd = [sys.executable, "-m", "edgeopt", "optimize", str(tiny_onnx), "--out", str(out), *ARGS]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start, reached = time.time(), False
    while proc.poll() is None and time.time() - start < 120:
        if point.startswith("after-"):
            reached = time.time() - start >= float(point[6:-1])
        else:
            reached = POINTS[point](out)
        if reached:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before {point}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _assert_absent_or_complete(out)
    # the next run into the same --out: succeeds, and nothing of the killed one is left
    flags = ["--overwrite"] if _visible(out) else []
    again = subprocess.run([*cmd, *flags], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    _assert_absent_or_complete(out)
    assert _visible(out)
    assert list(temp.iterdir()) == []
