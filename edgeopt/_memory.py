"""What a run's later steps no longer use, dropped.

Returning freed heap to the system between steps (a garbage collection and glibc's
``malloc_trim`` after every step, and a 256 KB mmap threshold for the process) was tried
and measured on mobilenet-v2 (cold ``optimize --no-bench``, quiet 2-core Xeon): 884 MB
peak RSS in 84.2 s with it, 904 MB in 66.6 s without. 20 MB is not worth 18 s, so it
is not done.
"""

from __future__ import annotations

import dataclasses

__all__ = ["let_go"]


def let_go(state) -> None:
    """Forget what the run's later steps no longer use: the PyTorch model (and its example
    inputs) once the FP32 ONNX is written, as the later steps run the ONNX (a pruned run
    keeps it: its reference and fine-tuning are the model's), and the FP32 ONNX's session
    that made the reference outputs (its own evaluation loads it again, for the output
    names)."""
    source = state.prepared.source
    if state.fp32_onnx is not None:
        from edgeopt._torch_side import release

        release(source)                 # the PyTorch child process, if the run has one
    if state.fp32_onnx is not None and state.pruning is None and source.module is not None:
        state.module = None
        state.prepared.source = dataclasses.replace(source, module=None, example_inputs=())
    state.ref_runner = None
