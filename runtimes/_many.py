"""Many samples through one loaded model at throughput, their outputs in sample order.

The evaluation and reference passes run a few hundred samples through each artifact; one
synchronous run at a time leaves the cores idle between runs (the Python side of each
run, the copies) and, for small models, inside them. The loaded models of the CPU
adapters keep a few samples in flight instead (``run_many``): ONNX Runtime on worker
threads over a one-thread session, OpenVINO with a few infer requests of the compiled
model started at once. The figures are the same as one at a time: the same kernels on the
same inputs, and each sample's outputs are its own. Benchmarks never go through here.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

Feeds = dict[str, np.ndarray]
Outputs = list[np.ndarray]

# Below this many samples a pass stays one at a time where going wide costs a load (the
# parity checks' 8 samples): the one-thread ONNX Runtime session takes about as long to
# create as 10-20 mobilenet-sized runs.
MANY_MIN = 32


def workers() -> int:
    """Samples run at once: the cores this process may use, or ``EDGEOPT_THREADS`` where
    set (a build sharing the cores with others)."""
    capped = os.environ.get("EDGEOPT_THREADS", "")
    if capped.isdigit() and int(capped) > 0:
        return int(capped)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:          # not on Linux
        return os.cpu_count() or 1


def one_at_a_time(run: Callable[[Feeds], Outputs], samples: Sequence[Feeds]) -> Iterator[Outputs]:
    for feeds in samples:
        yield run(feeds)


def threaded(run: Callable[[Feeds], Outputs], samples: Sequence[Feeds],
             count: int, depth: int | None = None) -> Iterator[Outputs]:
    """``run`` of each sample on ``count`` threads, yielded in sample order; at most
    ``depth`` (default ``2 * count``) samples are read and in flight at once."""
    depth = depth or 2 * count
    with ThreadPoolExecutor(count, thread_name_prefix="edgeopt-run") as pool:
        pending: deque = deque()
        for feeds in samples:
            if len(pending) >= depth:
                yield pending.popleft().result()
            pending.append(pool.submit(run, feeds))
        while pending:
            yield pending.popleft().result()


def pipelined(compiled, samples: Sequence[Feeds], count: int,
              prepare: Callable[[Feeds], dict]) -> Iterator[Outputs]:
    """Each sample through one of ``count`` OpenVINO infer requests of ``compiled``, started
    without waiting (``start_async``), yielded in sample order: a request is collected,
    oldest first, when the next sample needs it, so at most ``count`` samples are in
    flight. Plain requests, not ``AsyncInferQueue``: with its Python callbacks a process
    sometimes aborted at exit ("terminate called without an active exception",
    OpenVINO 2026.4)."""
    ports = range(len(compiled.outputs))
    idle = [compiled.create_infer_request() for _ in range(count)]
    busy: deque = deque()

    def collect():
        request = busy.popleft()
        request.wait()
        idle.append(request)
        return [np.array(request.get_output_tensor(j).data) for j in ports]

    try:
        for feeds in samples:
            if not idle:
                yield collect()
            request = idle.pop()
            request.start_async(prepare(feeds))
            busy.append(request)
        while busy:
            yield collect()
    finally:
        for request in busy:            # nothing left running when we leave early
            request.wait()
