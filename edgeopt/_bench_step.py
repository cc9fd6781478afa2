"""The benchmark step's records: one per artifact and device, and the INT8 speed check."""

from __future__ import annotations

from edgeopt.backends import Artifact
from edgeopt.report import ArtifactRecord

__all__ = ["artifact_record", "check_int8_speed"]


def artifact_record(art: Artifact, staging, target) -> ArtifactRecord:
    """``art``'s report record on ``target`` (None: no device runs it), before its
    benchmark figures."""
    from edgeopt.calibrate.pruning import deflated_size
    from edgeopt.convert import file_sha256

    files = [art.file, *art.companions]
    digests = {f: file_sha256(staging.path(f)) for f in files}
    return ArtifactRecord(
        path=art.file, files=files, format=art.format, precision=art.precision,
        runtime=art.runtime, device=target.label if target else None,
        adapter=target.adapter if target else None,
        size_bytes=sum(staging.path(f).stat().st_size for f in files),
        size_zipped_bytes=deflated_size([staging.path(f) for f in files]),
        sha256=digests[art.file], sha256_files=digests,
        accuracy=art.accuracy, quantization=art.quantization, status=art.status)


def check_int8_speed(records: list[ArtifactRecord]) -> list[str]:
    """An INT8 artifact not faster than FP32 on its runtime and device is never shipped
    silently: it is marked ``slower-than-fp32``; returns the warnings."""
    warnings = []
    fp32 = {(r.runtime, r.device): r for r in records if r.precision == "fp32"}
    for r in records:
        base = fp32.get((r.runtime, r.device))
        if r.precision != "int8" or base is None:
            continue
        if r.bench.get("label") != "measured" or base.bench.get("label") != "measured":
            continue
        p50, p50_fp32 = r.bench.get("p50_ms"), base.bench.get("p50_ms")
        if p50 is None or p50_fp32 is None:
            continue
        r.speedup_vs_fp32 = round(p50_fp32 / p50, 3)
        if p50 >= p50_fp32 and r.status == "ok":
            r.status = "slower-than-fp32"
            warnings.append(
                f"INT8 artifact {r.path} is NOT faster than FP32 on {r.runtime} {r.device} "
                f"(p50 {p50:.3f} ms vs {p50_fp32:.3f} ms): marked 'slower-than-fp32'; do not "
                "ship it for this runtime")
    return warnings
