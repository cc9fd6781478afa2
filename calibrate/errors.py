"""Errors of edgeopt.calibrate: one root, leaves carry their data."""

from __future__ import annotations


class CalibrationError(Exception):
    """Root of every error raised by edgeopt.calibrate."""


class CalibrationDataError(CalibrationError):
    """Calibration inputs are unusable: missing, malformed, non-finite, or not the model's."""
