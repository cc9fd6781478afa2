"""The cache's entries: checked by sha256, written whole or not at all, first writer wins."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from edgeopt._cache import Cache


def _cache(root: Path) -> tuple[Cache, list[str]]:
    warnings: list[str] = []
    return Cache(root, warnings.append), warnings


def _file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_store_then_restore_copies_files_and_records(tmp_path):
    cache, warnings = _cache(tmp_path / "c")
    key = cache.key("step", a=1)
    cache.store("step", key, {"m.onnx": _file(tmp_path / "src" / "m.onnx", b"model")},
                {"value": 0.5})
    dest = tmp_path / "dest"
    dest.mkdir()
    assert cache.restore("step", key, dest) == {"value": 0.5}
    assert (dest / "m.onnx").read_bytes() == b"model" and warnings == []
    assert cache.restore("step", cache.key("step", a=2), dest) is None   # other key: a miss


def test_tampered_file_or_manifest_is_removed_with_a_warning(tmp_path):
    cache, warnings = _cache(tmp_path / "c")
    for part in ("file", "manifest"):
        key = cache.key("step", part=part)
        cache.store("step", key, {"m.bin": _file(tmp_path / "m.bin", b"weights")}, {})
        [entry] = [e for e in (tmp_path / "c" / "v1" / "step").iterdir() if e.name == key]
        target = entry / ("m.bin" if part == "file" else "entry.json")
        target.write_bytes(b"tampered")
        dest = tmp_path / f"dest-{part}"
        dest.mkdir()
        assert cache.restore("step", key, dest) is None
        assert not entry.exists() and not (dest / "m.bin").exists()
    assert len(warnings) == 2 and all("corrupt" in w for w in warnings)
    assert "sha256" in warnings[0] and "entry.json" in warnings[1]


def test_concurrent_writers_of_one_key_leave_one_whole_entry(tmp_path):
    cache, warnings = _cache(tmp_path / "c")
    key = cache.key("step")
    sources = [_file(tmp_path / f"s{i}" / "a.bin", bytes([i]) * 100_000) for i in range(8)]
    threads = [threading.Thread(target=cache.store, args=("step", key, {"a.bin": s}, {"i": i}))
               for i, s in enumerate(sources)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = list((tmp_path / "c" / "v1" / "step").iterdir())
    assert [e.name for e in entries] == [key] and warnings == []    # no temporary left over
    manifest = json.loads((entries[0] / "entry.json").read_text())
    dest = tmp_path / "dest"
    dest.mkdir()
    assert cache.restore("step", key, dest) == manifest["meta"]
    assert (dest / "a.bin").read_bytes() == bytes([manifest["meta"]["i"]]) * 100_000


def test_off_reads_and_writes_nothing(tmp_path):
    cache = Cache(None)
    cache.store("step", "k", {"a": _file(tmp_path / "a", b"x")}, {})
    assert cache.restore("step", "k", tmp_path) is None and not cache.enabled


def test_cached_statistics_keep_their_arrays(tmp_path):
    """Reservoirs and per-channel maxima go through the cache as arrays (equalization
    reads the maxima as arrays)."""
    import numpy as np

    from edgeopt._step_cache import load_stats, save_stats
    from edgeopt.calibrate.stats import TensorStats

    stats = {"a": TensorStats("a", 0.0, 2.0, 4, np.arange(4, dtype=np.float32), 1, 0.0, 2.0,
                              np.array([1.0, 2.0], dtype=np.float32),
                              channel_sum=np.array([0.5, 3.0]), channel_samples=2),
             "b": TensorStats("b", -1.0, 1.0, 2, np.zeros(2, dtype=np.float32))}
    back = load_stats(tmp_path / "s.npz", save_stats(tmp_path / "s.npz", stats))
    assert isinstance(back["a"].channel_max, np.ndarray)
    np.testing.assert_array_equal(back["a"].channel_mean, [0.25, 1.5])
    assert back["b"].channel_mean is None
    np.testing.assert_array_equal(back["a"].channel_max, stats["a"].channel_max)
    np.testing.assert_array_equal(back["a"].reservoir, stats["a"].reservoir)
    assert back["b"].channel_max is None and back["b"].max == 1.0
