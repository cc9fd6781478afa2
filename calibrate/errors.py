"""Errors of edgeopt.calibrate: one root, leaves carry their data."""

from __future__ import annotations


class CalibrationError(Exception):
    """Root of every error raised by edgeopt.calibrate."""


class CalibrationDataError(CalibrationError):
    """Calibration inputs are unusable: missing, malformed, non-finite, or not the model's."""


class PreprocessError(CalibrationError):
    """An image preprocessing spec is malformed; ``problems`` lists every one found."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = list(problems)
        super().__init__(f"{where}: {'; '.join(self.problems)}")


class FinetuneError(CalibrationError):
    """Fine-tuning cannot run as asked: bad settings, or data that is missing or not the model's."""
