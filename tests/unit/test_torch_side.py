"""A PyTorch model is loaded and exported in a child process: the parent never imports
torch, the child's errors come back as the same errors, and the export is the one the
parent would make."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeopt import _torch_side
from edgeopt._source import load_source as load_here
from edgeopt.convert.errors import ModelLoadError
from edgeopt.recipe import Recipe

TESTS = Path(__file__).resolve().parents[1]


def _recipe(model: str, **overrides) -> Recipe:
    return Recipe().override(model=model, **overrides)


@pytest.mark.parametrize(("model", "prune", "expected"), [
    ("ref:mobilenet-v2", None, True), ("tiny_models:tiny_cnn", None, True),
    ("model.pt", None, True), ("model.pt2", None, True), ("model.onnx", None, False),
    ("ref:mobilenet-v2", {"mode": "channels"}, False),
])
def test_torch_models_go_apart_unless_pruned(model, prune, expected):
    recipe = _recipe(model, **({"prune": prune} if prune else {}))
    assert _torch_side.apart(recipe) is expected


def test_child_loads_and_digests_like_the_parent(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    from edgeopt._cache import module_digest

    recipe = _recipe("tiny_models:tiny_cnn", input_shape="1,3,8,8")
    source = _torch_side.load_source(recipe)
    try:
        here = load_here(recipe)
        assert source.module is None and source.kind == here.kind == "torch-factory"
        assert source.extra["digest"] == module_digest(here.module, here.example_inputs)
        assert source.extra["specs"] == [("input", "float32", (1, 3, 8, 8))]
        assert source.extra["fit_error"] is None
    finally:
        _torch_side.release(source)
    assert _torch_side.SIDE not in source.extra


def test_child_error_is_the_same_error(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    recipe = _recipe("tiny_models:not_a_module")
    with pytest.raises(ModelLoadError) as local:
        load_here(recipe)
    with pytest.raises(ModelLoadError) as remote:
        _torch_side.load_source(recipe)
    assert str(remote.value) == str(local.value)
    assert "in the PyTorch child process" in str(remote.value.__cause__)


def test_shape_that_does_not_fit_is_raised_when_data_is_prepared(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    from edgeopt._source import prepare
    from edgeopt.convert.errors import InputShapeError

    recipe = _recipe("tiny_models:tiny_cnn", input_shape="1,5,8,8", calib="random")
    source = _torch_side.load_source(recipe)        # loading succeeds; the check is later
    try:
        with pytest.raises(InputShapeError, match="--input-shape 1,5,8,8 does not fit"):
            prepare(recipe, source)
    finally:
        _torch_side.release(source)


def test_optimize_never_imports_torch_in_the_parent(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import edgeopt
        edgeopt.optimize("tiny_models:tiny_cnn", out={str(tmp_path / "out")!r},
                         input_shape="1,3,8,8", calib="random", benchmark=False, cache=False)
        print("torch imported:", "torch" in sys.modules)
    """)     # unguarded on purpose: the child must not import the caller's __main__
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch imported: False" in done.stdout
    assert len(list((tmp_path / "out").glob("*.int8-ort.onnx"))) == 1


def test_the_early_export_is_the_export_asked_for(monkeypatch, tmp_path):
    """The child exports as soon as the model is loaded; the parent's request then takes
    that file, byte for byte the export the parent would make itself."""
    monkeypatch.syspath_prepend(str(TESTS))
    from types import SimpleNamespace

    from edgeopt.convert import export_onnx

    recipe = _recipe("tiny_models:tiny_cnn", input_shape="1,3,8,8")
    source = _torch_side.load_source(recipe)
    side = source.extra[_torch_side.SIDE]
    names = tuple(n for n, _, _ in source.extra["specs"])
    state = SimpleNamespace(recipe=recipe, input_names=names, parity_ref=[],
                            prepared=SimpleNamespace(source=source,
                                                     output_names=source.output_names))
    try:
        result = _torch_side.export_source(state, tmp_path / "child.onnx")
    finally:
        _torch_side.release(source)
    assert not Path(side.scratch).exists()
    here = load_here(recipe)
    direct = export_onnx(here.module, here.example_inputs, tmp_path / "here.onnx",
                         input_names=names, output_names=here.output_names or None)
    assert result.path == tmp_path / "child.onnx"
    assert (result.exporter, result.output_names) == (direct.exporter, direct.output_names)
    assert (tmp_path / "child.onnx").read_bytes() == (tmp_path / "here.onnx").read_bytes()


def test_the_quantizers_imports_come_before_the_export_request(monkeypatch, tmp_path):
    """The request carries the parity samples, more than a pipe holds, so sending it waits
    for the child's early export: each backend's warm-up imports run before it, while the
    child still exports, not after."""
    monkeypatch.syspath_prepend(str(TESTS))
    from types import SimpleNamespace

    from edgeopt.backends import get_backend

    recipe = _recipe("tiny_models:tiny_cnn", input_shape="1,3,8,8")
    calls = []
    for runtime in recipe.runtimes:
        monkeypatch.setattr(type(get_backend(runtime)), "warm_up",
                            lambda self, quant, r=runtime: calls.append(f"warm up {r}"))
    source = _torch_side.load_source(recipe)
    side = source.extra[_torch_side.SIDE]
    real_ask = side.ask
    monkeypatch.setattr(side, "ask", lambda op, *a: calls.append(op) or real_ask(op, *a))
    names = tuple(n for n, _, _ in source.extra["specs"])
    state = SimpleNamespace(recipe=recipe, input_names=names, parity_ref=None,
                            parity_inputs=[{names[0]: np.zeros((1, 3, 8, 8), np.float32)}],
                            prepared=SimpleNamespace(source=source,
                                                     output_names=source.output_names))
    try:
        _torch_side.export_source(state, tmp_path / "child.onnx")
    finally:
        _torch_side.release(source)
    assert calls == [f"warm up {r}" for r in recipe.runtimes] + ["export"]
    assert len(state.parity_ref) == 1 and (tmp_path / "child.onnx").is_file()


def test_a_run_that_ends_before_asking_for_the_export_stops_the_child_at_once(monkeypatch):
    """The export from the cache, or an error while the data is prepared: the child, maybe
    still exporting, is killed rather than waited for, and its scratch folder removed."""
    import time

    monkeypatch.syspath_prepend(str(TESTS))
    source = _torch_side.load_source(_recipe("tiny_models:tiny_cnn", input_shape="1,3,8,8"))
    side = source.extra[_torch_side.SIDE]
    start = time.monotonic()
    _torch_side.release(source)
    assert time.monotonic() - start < 2.0
    assert side._proc.poll() is not None
    assert not Path(side.scratch).exists()


def test_a_killed_parent_leaves_no_scratch_folder(tmp_path):
    """SIGKILL of the parent while its child exports: the child ends once its export is
    done, and removes its scratch folder (nothing is left in TMPDIR)."""
    import os
    import signal
    import time

    temp = tmp_path / "tmp"
    temp.mkdir()
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from edgeopt import _torch_side
        from edgeopt.recipe import Recipe
        source = _torch_side.load_source(Recipe().override(model="tiny_models:tiny_cnn",
                                                           input_shape="1,3,8,8"))
        print(source.extra[_torch_side.SIDE].pid, flush=True)
        import time
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "TMPDIR": str(temp)})
    child = int(parent.stdout.readline())
    assert [p.name for p in temp.iterdir()][0].startswith("edgeopt-torch-")
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:        # gone, or a zombie whose new parent has not reaped it yet
            if Path(f"/proc/{child}/stat").read_text().split(") ")[1][0] == "Z":
                break
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its parent by 2 minutes")
    assert list(temp.iterdir()) == []
