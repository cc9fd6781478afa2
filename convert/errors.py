"""Errors of edgeopt.convert: one root, leaves carry their data."""

from __future__ import annotations


def first_line(error: BaseException | None) -> str:
    """The first line of an error's text (or its type's name): enough for a one-line message.

    edgeopt.convert's own copy, because it may not import edgeopt.runtimes; every other
    layer uses ``edgeopt.runtimes.first_line``, which also caps the line at 300 characters.
    """
    if error is None:
        return "unknown error"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class ConvertError(Exception):
    """Root of every error raised by edgeopt.convert."""


class ModelLoadError(ConvertError):
    """The model named by the user cannot be loaded."""

    def __init__(self, spec: str, problem: str, hint: str = "") -> None:
        self.spec = spec
        self.problem = problem
        self.hint = hint
        text = f"cannot load model '{spec}': {problem}"
        super().__init__(f"{text}; {hint}" if hint else text)


class InputShapeError(ConvertError):
    """``--input-shape`` is malformed or does not fit the model."""


class ExportError(ConvertError):
    """A conversion step failed."""

    def __init__(self, step: str, problem: str) -> None:
        self.step = step
        self.problem = problem
        super().__init__(f"{step} failed: {problem}")

