"""Bundles whose members inflate far past their zip size: memory stays bounded (issue 22, 1)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

BOMB_BYTES = 1100 << 20          # past 1 GB once inflated, about 1 MB as a zip
RSS_LIMIT_KB = 300 << 10


def _manifest(files: dict) -> dict:
    return {"schema_version": 1, "target": "linux-arm", "files": files,
            "model": {"file": "model.onnx", "files": ["model.onnx"], "runtime": "onnxruntime",
                      "format": "onnx"},
            "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 3, 8, 8]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 4]}],
            "reference": {"file": "reference.npz", "samples": 1},
            "tolerance": {"outputs": {"y": {"max_abs_diff": 0.1, "min_cosine": 0.99}}}}


def _write_zeros(zf: zipfile.ZipFile, name: str, size: int) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    block = bytes(8 << 20)
    with zf.open(info, mode="w", force_zip64=True) as f:
        left = size
        while left:
            f.write(block[:min(left, len(block))])
            left -= min(left, len(block))


def _bomb(path: Path, member: str) -> Path:
    """A zip of about 1 MB: ``model.onnx`` inflates to 1.1 GB, listed with a wrong checksum;
    or a ``manifest.json`` of 64 MB (refused by its header, whatever its size)."""
    files = {"model.onnx": {"sha256": "0" * 64, "size": BOMB_BYTES},
             "reference.npz": {"sha256": "0" * 64, "size": 4}}
    with zipfile.ZipFile(path, "w") as zf:
        if member == "manifest.json":
            _write_zeros(zf, "manifest.json", 64 << 20)
        else:
            zf.writestr("manifest.json", json.dumps(_manifest(files)))
            _write_zeros(zf, "model.onnx", BOMB_BYTES)
        zf.writestr("reference.npz", b"none")
    return path


def _verify_peak_rss(args: list[str]) -> tuple[int, str, int]:
    """Exit code, stderr and peak RSS (KB) of ``edgeopt ARGS`` in a child process."""
    probe = ("import resource, subprocess, sys\n"
             "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
             "sys.stderr.write(p.stderr)\n"
             "sys.exit(p.returncode)\n")
    proc = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "edgeopt", *args],
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr, int(proc.stdout)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    return {m: _bomb(folder / m / "bomb.zip", m) for m in ("model.onnx", "manifest.json")
            if (folder / m).mkdir() is None}


@pytest.mark.parametrize("member, verb, code", [
    ("model.onnx", "verify", 1),
    ("model.onnx", "bench", 1),
    ("manifest.json", "verify", 1),
])
def test_zip_bomb_is_refused_in_bounded_memory(bombs, member, verb, code):
    bomb = bombs[member]
    tmp_path = bomb.parent
    assert bomb.stat().st_size < 3 << 20
    args = [verb, str(bomb), "--no-bench"] if verb == "verify" else [verb, str(bomb)]
    rc, err, peak_kb = _verify_peak_rss(args)
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "model.onnx does not match" in lines[0] or "manifest.json" in lines[0], lines[0]
    assert peak_kb < RSS_LIMIT_KB, f"peak RSS {peak_kb} KB"
    print(f"{verb} {member} bomb ({bomb.stat().st_size:,} bytes): peak RSS {peak_kb} KB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip"]
