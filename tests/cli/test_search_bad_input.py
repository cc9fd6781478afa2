"""`edgeopt search` bad input: one line, exit 2, nothing written, before any model loads."""

from __future__ import annotations

import pytest

pytest.importorskip("optuna")


@pytest.mark.parametrize(("flags", "says"), [
    (["--max-latency-ms", "rpi4=20"], "not a searched device"),
    (["--max-latency-ms", "host-cpu"], "DEVICE=MS"),
    (["--max-accuracy-drop", "lots"], "--max-accuracy-drop 'lots'"),
    (["--device", "host-cpux"], "did you mean 'host-cpu'"),
    (["--trials", "0"], "--trials and --batch must be >= 1"),
    (["--space", "nowhere.yaml"], "--space nowhere.yaml: cannot read it"),
    (["--resume"], "study.db not found"),
    (["--ray-address", "10.0.0.1:6379"], "--ray-address applies to --executor ray"),
])
def test_bad_search_input_is_one_line_and_writes_nothing(run_cli, monkeypatch, tmp_path, flags,
                                                         says):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "S"
    result = run_cli("search", "ref:digits-cnn", "--out", str(out), *flags)
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.err
    assert not out.exists()
