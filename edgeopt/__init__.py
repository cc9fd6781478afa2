"""edgeopt: turn a trained model into small, fast, measured artifacts for edge devices."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "optimize"]


def __getattr__(name: str):
    # The pipeline pulls in torch/onnx; keep `import edgeopt` (and edgeopt.runtimes) light.
    if name == "optimize":
        from edgeopt.pipeline import optimize

        return optimize
    msg = f"module 'edgeopt' has no attribute {name!r}"
    raise AttributeError(msg)
