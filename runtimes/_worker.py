"""One benchmark repeat in a fresh process; reads a JSON job on stdin, prints JSON."""

from __future__ import annotations

import json
import resource
import sys
from types import SimpleNamespace

import numpy as np


def _peak_rss_mb() -> float:
    # VmHWM belongs to this process image; ru_maxrss on Linux survives exec and would report
    # the (larger) parent that forked this worker.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024  # macOS: bytes


def main() -> int:
    import time

    from edgeopt.runtimes import get_adapter
    from edgeopt.runtimes.bench import BenchProtocol, timed_runs
    from edgeopt.runtimes.errors import RuntimeAdapterError

    job = json.loads(sys.stdin.read())
    p = job["protocol"]
    try:
        adapter = get_adapter(job["adapter"])
        with np.load(job["inputs"]) as data:
            feeds = {k: data[k] for k in data.files}
        unit = SimpleNamespace(**job.get("unit") or {})
        shapes = {name: tuple(array.shape) for name, array in feeds.items()}
        loaded = adapter.load(job["model"], unit, p["threads"], shapes)
        start = time.perf_counter()
        loaded.run(feeds)
        first_ms = (time.perf_counter() - start) * 1000
        for _ in range(p["warmup"]):
            loaded.run(feeds)
        times, stopped = timed_runs(lambda: loaded.run(feeds), BenchProtocol(**p))
    except RuntimeAdapterError as e:
        print(json.dumps({"error": str(e), "error_type": type(e).__name__}))
        return 0
    print(json.dumps({"times_ms": times, "stopped": stopped, "load_ms": loaded.load_ms, "first_inference_ms": first_ms,
                      "peak_rss_mb": _peak_rss_mb(), "info": loaded.info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
