"""Errors of the edgeopt core, and the set of errors the CLI reports as the user's."""

from __future__ import annotations

from edgeopt.runtimes.errors import short_reason

__all__ = ["BudgetError", "EdgeoptError", "OutputError", "UsageError", "short_reason",
           "user_errors"]


class EdgeoptError(Exception):
    """Root of the core's errors (recipe, pipeline, report)."""


class UsageError(EdgeoptError):
    """The user asked for something that cannot be done as asked."""


class OutputError(EdgeoptError):
    """The output location cannot be used."""


class BudgetError(EdgeoptError):
    """A budget the user set (accuracy, speed) is broken; the artifacts are still written."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Every package's root error: these are reported as one line, exit 2.

    Each sub-package keeps its own root (runtimes must import nothing of the project),
    so the CLI gathers them here instead of forcing one shared base class.
    """
    from edgeopt.runtimes.errors import ComparisonError, DeviceProfileError, RuntimeAdapterError

    errors: list[type[BaseException]] = [EdgeoptError, RuntimeAdapterError, DeviceProfileError,
                                         ComparisonError]
    try:
        from edgeopt.convert.errors import ConvertError

        errors.append(ConvertError)
    except ImportError:  # runtime-only install
        pass
    try:
        from edgeopt.calibrate.errors import CalibrationError

        errors.append(CalibrationError)
    except ImportError:
        pass
    try:
        from edgeopt.reference_models import UnknownReferenceModel

        errors.append(UnknownReferenceModel)
    except ImportError:
        pass
    return tuple(errors)
