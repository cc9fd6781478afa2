"""The PyTorch side of a run, in a child process: the parent never imports torch.

A PyTorch model (``ref:NAME``, ``package.module:factory``, ``.pt``, ``.pt2``) is loaded,
checked against its example inputs, digested for the step cache, exported to ONNX and run
on the parity samples in a child process; the parent gets plain facts back (input specs,
the digest, the export's result and the parity outputs) and ends the child once the FP32
ONNX is written. What torch leaves resident (its libraries, the model, the dynamo
exporter's ~200 MB) goes with the child, instead of staying in the parent through the
quantize and evaluate steps (cold ``optimize`` of mobilenet-v2: see docs/speed.md).
The child exports as soon as the model is loaded, while the parent prepares the data, and
hands the file over when the parent asks for it (the same call, the same bytes).

An error in the child comes back as the same exception class and message (so the same
one line and exit code); its traceback becomes the cause, shown with ``--debug``.
Pruning keeps the model in the parent (it fine-tunes and measures it there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import traceback
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

__all__ = ["TorchSide", "apart", "export_source", "load_source", "release", "start",
           "without_torch"]

SIDE = "torch_side"                      # the SourceModel.extra key of a run's child
_TORCH_SUFFIXES = (".pt", ".pth", ".pt2")


def apart(recipe) -> bool:
    """Whether the recipe's model is loaded and exported in a child: a PyTorch model,
    not pruned (pruning runs the model in the parent)."""
    from edgeopt.convert.load import _FACTORY_SPEC

    spec = recipe.model
    if recipe.prune is not None or os.name != "posix":    # the pipes go by fd number
        return False
    if spec.startswith("ref:"):
        return True
    path = Path(spec)
    if path.suffix.lower() in _TORCH_SUFFIXES:
        return True
    return bool(_FACTORY_SPEC.match(spec)) and not path.exists()


class ChildTraceback(Exception):
    """Where the child raised (the cause of the error it sent back)."""


class TorchSide:
    """A child Python process serving ``load`` and ``export`` requests, one at a time.

    A plain subprocess (``python -c``) rather than multiprocessing's spawn, which would
    import the caller's ``__main__`` again (an unguarded script calling
    ``edgeopt.optimize`` would fail). Requests and answers are pickled over two pipes of
    their own; the child's stdout and stderr are the parent's."""

    def __init__(self) -> None:
        self.scratch = tempfile.mkdtemp(prefix="edgeopt-torch-")   # the early export's
        child_reads, parent_writes = os.pipe()
        parent_reads, child_writes = os.pipe()
        root = str(Path(__file__).resolve().parents[1])    # where this edgeopt is
        code = (f"import sys; sys.path.insert(0, {root!r}); "
                f"from edgeopt._torch_side import _main; _main({child_reads}, {child_writes})")
        self._proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                      pass_fds=(child_reads, child_writes))
        os.close(child_reads)
        os.close(child_writes)
        self._send = Connection(parent_writes, readable=False)
        self._recv = Connection(parent_reads, writable=False)
        self._asked: list[str] = []         # requests not answered yet, oldest first
        self._finalizer = weakref.finalize(self, _stop, self._send, self._recv, self._proc,
                                           self.scratch)

    def call(self, op: str, *args) -> Any:
        """The child's answer to ``op``; its exception, re-raised here."""
        self.ask(op, *args)
        return self.answer()

    def ask(self, op: str, *args) -> None:
        """Send ``op``; the child works on it while the caller goes on. The send itself
        waits for the child to read it when its arguments fill the pipe (~64 KB) while
        the child is busy."""
        try:
            self._send.send((op, args))
        except OSError as e:
            raise self._ended(op) from e
        self._asked.append(op)

    def answer(self) -> Any:
        """The answer to the oldest request asked; its exception, re-raised here."""
        op = self._asked[0]
        try:
            status, value = self._recv.recv()
        except (EOFError, OSError) as e:
            raise self._ended(op) from e
        self._asked.pop(0)
        if status == "ok":
            return value
        raise _rebuilt(*value)

    def _ended(self, op: str) -> RuntimeError:
        code = self._proc.wait()
        return RuntimeError(f"the PyTorch child process ended during '{op}' (exit code "
                            f"{code}); out of memory?")

    def close(self) -> None:
        self._finalizer()

    @property
    def pid(self) -> int:
        return self._proc.pid


def _stop(send, recv, proc, scratch: str) -> None:
    """End the child, whether idle or still working (the run ended, e.g. on an error or
    with the export from the cache, before it needed the answer): killed, as it holds
    nothing to keep, where letting it exit took its interpreter's teardown (torch's: 1.7 s
    on mobilenet-v2, waited for); then remove its scratch folder."""
    proc.kill()
    send.close()
    proc.wait()
    recv.close()
    shutil.rmtree(scratch, ignore_errors=True)


# ------------------------------------------------------------------------------ parent

def load_source(recipe):
    """The recipe's PyTorch model, loaded in a child: a SourceModel without ``module``
    whose ``extra`` holds the child, the input specs, the model digest and, when the
    example inputs do not fit, the error :func:`edgeopt._source.prepare` raises."""
    return start(recipe)()


def start(recipe) -> Callable[[], Any]:
    """Start loading the recipe's model in a child; returns the call that waits for it
    and gives :func:`load_source`'s SourceModel."""
    side = TorchSide()
    side.ask("load", recipe, list(sys.path), side.scratch)
    return functools.partial(_loaded, side, recipe)


def _loaded(side: TorchSide, recipe):
    try:
        facts = side.answer()
    except BaseException:
        side.close()
        raise
    extra = {SIDE: side, "specs": facts.pop("specs"), "digest": facts.pop("digest"),
             "fit_error": facts.pop("fit_error")}
    if recipe.model.startswith("ref:"):
        from edgeopt.reference_models import get_reference

        extra["reference"] = get_reference(recipe.model[len("ref:"):])
    from edgeopt.convert import SourceModel

    return SourceModel(**facts, extra=extra)


def export_source(state, path: Path):
    """``convert.export_onnx`` of the run's PyTorch model to ``path``, in the child when
    it holds the model (which then also gives the parity reference); returns the
    ExportResult."""
    source = state.prepared.source
    side = source.extra.get(SIDE)
    if side is None:
        from edgeopt.convert import export_onnx

        return export_onnx(state.module, source.example_inputs, path,
                           input_names=state.input_names,
                           output_names=state.prepared.output_names or None)
    if state.recipe.quant.enabled:      # while the child exports, the quantizers' imports
        from edgeopt.backends import get_backend

        for runtime in state.recipe.runtimes:
            get_backend(runtime).warm_up(state.recipe.quant)
    # The request (with the parity samples, more than a pipe holds) is read, so sent,
    # once the child has finished its early export: imports before it, not after.
    side.ask("export", str(path), state.input_names, state.prepared.output_names or None,
             list(state.parity_inputs) if state.parity_ref is None else None)
    result, outs = side.answer()
    if state.parity_ref is None:
        state.parity_ref = outs
    return result


def release(source) -> None:
    """End the run's child, if it has one (the FP32 ONNX is written)."""
    side = source.extra.pop(SIDE, None)
    if side is not None:
        side.close()


@contextlib.contextmanager
def without_torch():
    """NNCF imports torch whenever it can (its tensor functions on import, its backend
    check on every ``nncf.quantize``), though an OpenVINO model never needs it: ~180 MB
    resident for nothing. While the process has not imported torch, hide it: an import
    of torch then raises ImportError, which NNCF takes as "not installed"."""
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None
    try:
        yield
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]


def _rebuilt(module: str, qualname: str, message: str, attrs: bytes, where: str):
    """The child's exception, as its own class with its own message."""
    cls = None
    try:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        error: BaseException = RuntimeError(f"{qualname}: {message}")
    else:
        error = cls.__new__(cls)
        BaseException.__init__(error, message)
        try:
            error.__dict__.update(pickle.loads(attrs))
        except Exception:  # noqa: BLE001 - the attributes are a courtesy; the message stays
            pass
    error.__cause__ = ChildTraceback(f"in the PyTorch child process:\n{where}")
    return error


# ------------------------------------------------------------------------------- child

def _main(read_fd: int, write_fd: int) -> None:
    """The child's loop: one request in, one answer out, until None or the parent's end.
    Once a model is loaded, the child exports it at once, into the parent's scratch
    folder, while the parent prepares the data (:func:`_export_early`); the parent's
    export request then takes that file."""
    recv, send = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    held: dict = {}
    try:
        while True:
            try:
                request = recv.recv()
            except EOFError:        # the parent ended (even killed): so does the child
                return
            op, args = request
            try:
                answer = ("ok", _OPS[op](held, *args))
            except BaseException as e:  # noqa: BLE001 - every error goes back to the parent
                answer = ("error", _packed(e))
            send.send(answer)
            if "early" in held and "early_done" not in held:
                _export_early(held)
    finally:        # the parent removes it too, unless it was killed
        if held.get("scratch"):
            shutil.rmtree(held["scratch"], ignore_errors=True)


def _packed(e: BaseException) -> tuple:
    try:
        attrs = pickle.dumps(dict(vars(e)))
    except Exception:  # noqa: BLE001 - unpicklable attributes: the message alone
        attrs = pickle.dumps({})
    return (type(e).__module__, type(e).__qualname__, str(e), attrs, traceback.format_exc())


def _load(held: dict, recipe, path: list[str], scratch: str | None = None) -> dict:
    from edgeopt._cache import module_digest
    from edgeopt._source import load_source as load_here
    from edgeopt._source import torch_specs

    sys.path[:] = path                  # the parent's (a factory's module may be on it)
    held["scratch"] = scratch
    source = load_here(recipe)
    held["source"] = source
    specs, fit_error = None, None
    try:
        specs = torch_specs(source, recipe.data.input_shape)
    except Exception as e:  # noqa: BLE001 - raised by the parent when it prepares the data
        fit_error = _packed(e)
    facts = {f.name: getattr(source, f.name) for f in dataclasses.fields(source)
             if f.name not in ("module", "example_inputs", "extra")}
    if specs is not None and scratch is not None:
        # what the parent's export request will name: the inputs as in the specs, the
        # source's output names (edgeopt._source.prepare keeps them)
        held["early"] = (Path(scratch) / "early.onnx", tuple(n for n, _, _ in specs),
                         source.output_names or None)
    return {**facts, "specs": specs, "fit_error": fit_error,
            "digest": module_digest(source.module, source.example_inputs)}


def _export_early(held: dict) -> None:
    """The export the parent is about to ask for, made before it asks; its result, or its
    error, is kept for :func:`_export`."""
    from edgeopt.convert import export_onnx

    source = held["source"]
    path, input_names, output_names = held["early"]
    try:
        held["early_done"] = export_onnx(source.module, source.example_inputs, path,
                                         input_names=input_names, output_names=output_names)
    except Exception as e:  # noqa: BLE001 - raised again when the parent asks
        held["early_done"] = e


def _export(held: dict, path: str, input_names, output_names, parity_inputs):
    from edgeopt._outputs import torch_outputs
    from edgeopt.convert import export_onnx

    source = held["source"]
    early, done = held.pop("early", None), held.pop("early_done", None)
    if early is not None and done is not None and early[1:] == (tuple(input_names),
                                                               output_names):
        if isinstance(done, Exception):
            raise done
        _move(early[0], Path(path))
        result = dataclasses.replace(done, path=Path(path))
    else:
        result = export_onnx(source.module, source.example_inputs, Path(path),
                             input_names=input_names, output_names=output_names)
    outs = (None if parity_inputs is None
            else torch_outputs(source.module, input_names, parity_inputs))
    return result, outs


def _move(src: Path, dst: Path) -> None:
    """``src`` to ``dst``, which appears whole or not at all (a copy beside it first when
    the two are on different file systems)."""
    try:
        os.replace(src, dst)
    except OSError:
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
            src.unlink(missing_ok=True)


_OPS = {"load": _load, "export": _export}
