"""Latency estimates from a device profile: a roofline per ONNX node, scaled by efficiency
factors fitted to measured runs.

    t_node  = max(ops / (peak[precision] * eta[class] * (eta_int8 if int8)),
                  bytes / (bandwidth * eta_mem)) + overhead
    t_model = sum of t_node over the nodes the runtime executes + one call overhead

The factors are fitted per (device, unit, runtime) by ``calibrate`` (squared log error,
weak log-normal priors so a dozen models can fit eight factors) and stored in
``$EDGEOPT_CACHE_DIR/calibration.json`` (default ``~/.cache/edgeopt``). Every figure this
module returns is labelled ``estimated`` and carries its error band and where its
calibration came from. Graph costs are in :mod:`edgeopt.runtimes._graph_costs`, the peaks
and bandwidth the factors scale in :mod:`edgeopt.runtimes._peaks`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeopt.runtimes._graph_costs import (
    OP_CLASSES,
    PRECISION_INDEX,
    ModelCosts,
    model_costs,
)
from edgeopt.runtimes._peaks import (
    DEFAULT_CACHE_MB,
    MissingPeakFigures,
    unit_basis,
)
from edgeopt.runtimes.devices import ComputeUnit, DeviceProfile, detect_host
from edgeopt.runtimes.errors import RuntimeAdapterError

__all__ = [
    "Calibration",
    "CalibrationMissing",
    "Measurement",
    "MissingPeakFigures",
    "PRIOR",
    "calibrate",
    "calibration_path",
    "estimate",
    "fit_params",
    "load_calibration",
    "loo_predictions",
    "model_costs",
    "predict_ms",
    "save_calibration",
    "unit_basis",
]

# The fitted factors, their prior (documented starting point, also what an uncalibrated
# unit kind uses), and the bounds of the fit. eta_* are fractions of the peak; eta_mem of
# the profile's bandwidth (above 1 when a small model lives in cache); overheads in us.
# eta_cache scales the bandwidth for models whose weights fit the last-level cache (they
# stay there between inferences), eta_mem for the others.
PARAMS = (*(f"eta_{c}" for c in OP_CLASSES), "eta_int8", "eta_mem", "eta_cache", "node_us",
          "call_us")
PRIOR = {"eta_conv": 0.3, "eta_depthwise": 0.05, "eta_matmul": 0.3, "eta_elementwise": 0.02,
         "eta_other": 0.02, "eta_int8": 0.5, "eta_mem": 1.0, "eta_cache": 3.0, "node_us": 3.0,
         "call_us": 30.0}
_BOUNDS = {"eta_int8": (0.02, 2.0), "eta_mem": (0.02, 50.0), "eta_cache": (0.02, 100.0),
           "node_us": (0.05, 200.0), "call_us": (1.0, 2000.0)}
_ETA_BOUNDS = (1e-4, 1.5)
_PRIOR_SIGMA = np.log(10.0)      # a factor of 10 off the prior costs as much as one 100% miss
# Kinds never calibrated here (igpu, npu): the prior's efficiency relative to the profile's
# peaks is a guess, hence a wide band.
_PRIOR_BAND = 3.0
_TRANSFER_WIDEN = {"same-arch": 1.5, "cross-arch": 2.0}   # exponent on the own band factor
_TRANSFER_FLOOR = {"same-arch": 1.5, "cross-arch": 2.0}   # band factor at least this
HOST_DEVICE = "host-cpu"


class CalibrationMissing(RuntimeAdapterError):
    """No stored calibration, or too few measurements to fit one."""


@dataclass(frozen=True)
class Measurement:
    """One measured model: a name for tables, the ONNX graph the costs come from, the p50."""

    model: str
    path: Path
    p50_ms: float


@dataclass(frozen=True)
class Calibration:
    device: str
    unit: str
    runtime: str
    params: dict[str, float]
    basis: dict                       # peaks, bandwidth and their arithmetic at fit time
    models: list[dict]                # {model, p50_ms, fitted_ms}
    loo: list[dict]                   # {model, p50_ms, predicted_ms, abs_pct}
    date: str = ""
    host_cpu: str = ""
    arch: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.device}/{self.unit}/{self.runtime}"

    def loo_abs_pct(self) -> np.ndarray:
        return np.array([r["abs_pct"] for r in self.loo], dtype=float)

    def band_factor(self) -> float:
        """Multiplicative half-width: p90 of the leave-one-out errors, as a ratio."""
        if not self.loo:
            return _PRIOR_BAND
        logs = np.abs(np.log([r["predicted_ms"] / r["p50_ms"] for r in self.loo]))
        return float(np.exp(np.percentile(logs, 90)))

    def to_dict(self) -> dict:
        return {"device": self.device, "unit": self.unit, "runtime": self.runtime,
                "params": self.params, "basis": self.basis, "models": self.models,
                "loo": self.loo, "date": self.date, "host_cpu": self.host_cpu,
                "arch": self.arch, "extra": self.extra}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        return cls(**{k: data[k] for k in ("device", "unit", "runtime", "params", "basis",
                                           "models", "loo")},
                   date=data.get("date", ""), host_cpu=data.get("host_cpu", ""),
                   arch=data.get("arch", ""), extra=data.get("extra", {}))


# ---------------------------------------------------------------------------- runtimes

def _runtime_name(runtime: str) -> str:
    if runtime.startswith("ort"):
        return "onnxruntime"
    if runtime.startswith("ov"):
        return "openvino"
    return runtime


# ---------------------------------------------------------------------------- roofline

def predict_ms(costs: ModelCosts, params: dict[str, float], basis: dict) -> float:
    """The roofline sum for one model, in milliseconds."""
    eta = np.array([params[f"eta_{c}"] for c in OP_CLASSES])[costs.op_class]
    eta = np.where(costs.precision == PRECISION_INDEX["int8"], eta * params["eta_int8"], eta)
    peaks = np.array([basis["peak_gops"][p] for p in PRECISION_INDEX]) * 1e6   # ops per ms
    compute = costs.ops / (peaks[costs.precision] * eta)
    cached = costs.weight_bytes <= basis.get("cache_mb", DEFAULT_CACHE_MB) * 1e6
    memory = costs.bytes / (basis["bandwidth_gbs"] * 1e6
                            * params["eta_cache" if cached else "eta_mem"])
    return float(np.maximum(compute, memory).sum()
                 + (costs.executed * params["node_us"] + params["call_us"]) / 1000)


def fit_params(costs: list[ModelCosts], p50_ms: list[float], basis: dict,
               prior_sigma: float | None = _PRIOR_SIGMA) -> dict[str, float]:
    """The factors minimizing the squared log error of the predictions, plus
    ``((log factor - log prior) / prior_sigma)^2`` each (None: no prior)."""
    from scipy.optimize import least_squares

    lo = np.log([_BOUNDS.get(p, _ETA_BOUNDS)[0] for p in PARAMS])
    hi = np.log([_BOUNDS.get(p, _ETA_BOUNDS)[1] for p in PARAMS])
    prior = np.log([PRIOR[p] for p in PARAMS])
    measured = np.log(p50_ms)

    def residuals(x: np.ndarray) -> np.ndarray:
        params = dict(zip(PARAMS, np.exp(x), strict=True))
        pred = np.log([predict_ms(c, params, basis) for c in costs])
        if prior_sigma is None:
            return pred - measured
        return np.concatenate([pred - measured, (x - prior) / prior_sigma])

    best = None
    # The max() makes the surface piecewise: start from the prior and from points where
    # every node is compute bound, or memory bound.
    for shift in (0.0, 1.5, -1.5):
        x0 = np.clip(prior + shift * np.isin(PARAMS, ["eta_mem"]), lo + 1e-9, hi - 1e-9)
        fit = least_squares(residuals, x0, bounds=(lo, hi), max_nfev=2000, ftol=1e-10,
                            xtol=1e-10, gtol=1e-10)
        if best is None or fit.cost < best.cost:
            best = fit
    return {p: float(v) for p, v in zip(PARAMS, np.exp(best.x), strict=True)}


def loo_predictions(costs: list[ModelCosts], p50_ms: list[float], basis: dict,
                    names: list[str]) -> list[dict]:
    """For each model: fit on the others, predict it."""
    rows = []
    for i, name in enumerate(names):
        rest = [j for j in range(len(costs)) if j != i]
        params = fit_params([costs[j] for j in rest], [p50_ms[j] for j in rest], basis)
        pred = predict_ms(costs[i], params, basis)
        rows.append({"model": name, "p50_ms": round(p50_ms[i], 4),
                     "predicted_ms": round(pred, 4),
                     "abs_pct": round(abs(pred - p50_ms[i]) / p50_ms[i] * 100, 1)})
    return rows


def calibrate(measurements: list[Measurement], profile: DeviceProfile, unit: ComputeUnit,
              runtime: str, *, basis: dict | None = None) -> Calibration:
    """Fit the efficiency factors of ``unit`` with ``runtime`` to measured p50s.

    ``basis`` (peaks and bandwidth) defaults to :func:`unit_basis`; the fit is stored with
    it so later estimates scale the same figures. Needs scipy (imported here).
    """
    if len(measurements) < 3:
        msg = f"calibration needs at least 3 measured models, got {len(measurements)}"
        raise CalibrationMissing(msg)
    basis = basis or unit_basis(profile, unit)
    costs = [model_costs(m.path) for m in measurements]
    p50 = [m.p50_ms for m in measurements]
    names = [m.model for m in measurements]
    params = fit_params(costs, p50, basis)
    models = [{"model": n, "p50_ms": round(p, 4), "fitted_ms": round(predict_ms(c, params, basis), 4)}
              for n, p, c in zip(names, p50, costs, strict=True)]
    return Calibration(
        device=profile.id, unit=unit.id, runtime=_runtime_name(runtime), params=params,
        basis=basis, models=models, loo=loo_predictions(costs, p50, basis, names),
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        host_cpu=detect_host()["name"], arch=basis.get("arch", platform.machine()),
    )


# ---------------------------------------------------------------------------- storage

def calibration_path() -> Path:
    base = os.environ.get("EDGEOPT_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "edgeopt") / "calibration.json"


def _read_store() -> dict:
    path = calibration_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"schema_version": 1, "entries": {}}
    except (OSError, ValueError) as e:
        msg = f"{path}: cannot read the stored calibrations ({e}); delete it and recalibrate"
        raise CalibrationMissing(msg) from e
    return data if isinstance(data.get("entries"), dict) else {"schema_version": 1, "entries": {}}


def save_calibration(cal: Calibration) -> Path:
    """Store (replacing the same device/unit/runtime) with an atomic rename."""
    path = calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read_store()
    data["entries"][cal.key] = cal.to_dict()
    fd, tmp = tempfile.mkstemp(prefix=".calibration.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_calibration(device: str, unit: str, runtime: str) -> Calibration | None:
    raw = _read_store()["entries"].get(f"{device}/{unit}/{_runtime_name(runtime)}")
    return Calibration.from_dict(raw) if raw else None


# ---------------------------------------------------------------------------- estimate

def _which_calibration(profile: DeviceProfile, unit: ComputeUnit, runtime: str, basis: dict):
    """(params, band factor, calibration text, calibration-basis or None, uncalibrated)."""
    own = load_calibration(profile.id, unit.id, runtime)
    host_name = detect_host()["name"]
    if own is not None and not (profile.host and own.host_cpu != host_name):
        n = len(own.models)
        return (own.params, own.band_factor(),
                f"this unit's own ({own.date[:10]}, {n} models, {own.runtime})", own, False)
    donor = own if own is not None else (
        load_calibration(HOST_DEVICE, "cpu", runtime) if unit.kind == "cpu" else None)
    if donor is not None:
        cross = donor.arch != basis.get("arch")
        how = "cross-arch" if cross else "same-arch"
        own_band = donor.band_factor()
        band = max(own_band ** _TRANSFER_WIDEN[how], _TRANSFER_FLOOR[how])
        why = (f"an {donor.arch} calibration applied to {basis.get('arch')} kernels"
               if cross else "another CPU of the same architecture")
        text = (f"transferred from {donor.device}:{donor.unit} ({donor.host_cpu}, "
                f"{donor.date[:10]}): {why}; band widened from x{own_band:.2f} to x{band:.2f} "
                f"(own band ^{_TRANSFER_WIDEN[how]:g}, at least x{_TRANSFER_FLOOR[how]:g}) "
                "because its efficiency factors were fitted on other kernels and caches")
        return donor.params, band, text, None, False
    text = (f"none: uncalibrated {unit.kind} prior (documented efficiency "
            f"{', '.join(f'{k}={v:g}' for k, v in PRIOR.items())}), band x{_PRIOR_BAND:g}")
    return dict(PRIOR), _PRIOR_BAND, text, None, True


def _sig(value: float) -> float:
    return float(f"{value:.4g}")


def estimate(model: Path, profile: DeviceProfile, unit: ComputeUnit, runtime: str,
             basis: dict | None = None) -> dict:
    """Estimated latency of ``model`` (an ONNX file) on ``unit`` with ``runtime``.

    Returns a JSON-able dict: ``label`` ("estimated"), ``p50_ms``, ``low_ms``, ``high_ms``,
    ``band`` (what the band is), ``calibration`` (whose factors were used), ``uncalibrated``
    (true when only the prior was used) and ``basis`` (peaks, bandwidth, their sources,
    op and byte counts per class and precision). ``basis`` given (a :func:`unit_basis`
    taken once) keeps a host's measured bandwidth and clock fixed across calls, so the
    same model gets the same figure (``edgeopt search`` pins it per study).

    Raises:
        MissingPeakFigures: the unit's profile has no peaks/bandwidth (and it is not the host).
        EstimateUnavailable: ``onnx`` is not installed, or the model is not ONNX.
    """
    model = Path(model)
    runtime = _runtime_name(runtime)
    basis = basis or unit_basis(profile, unit)
    params, band, text, own, uncalibrated = _which_calibration(profile, unit, runtime, basis)
    if own is not None:        # the host: scale the figures the fit was made against
        basis = {**basis, **{k: own.basis[k] for k in
                             ("bandwidth_gbs", "peak_gops", "sources", "cache_mb")
                             if k in own.basis}}
    costs = model_costs(model)
    p50 = predict_ms(costs, params, basis)
    if uncalibrated:
        band_text = f"x{band:g} either way: prior efficiency of an uncalibrated {unit.kind}"
    elif own is not None:
        band_text = (f"x{band:.2f} either way: leave-one-out p90 abs error of the calibration "
                     f"({len(own.loo)} models)")
    else:
        band_text = f"x{band:.2f} either way: transferred calibration's LOO p90, widened"
    return {
        "label": "estimated",
        "p50_ms": _sig(p50),
        "low_ms": _sig(p50 / band),
        "high_ms": _sig(p50 * band),
        "band": band_text,
        "calibration": text,
        "uncalibrated": uncalibrated,
        "device": profile.id, "unit": unit.id, "runtime": runtime,
        "basis": {**basis, "params": {k: round(v, 5) for k, v in params.items()},
                  **costs.summary()},
    }
