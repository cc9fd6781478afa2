"""The benchmark step's records: one per artifact and device, and the INT8 speed check."""

from __future__ import annotations

from edgeopt.backends import Artifact
from edgeopt.report import ArtifactRecord

__all__ = ["artifact_record", "check_int8_speed", "file_facts"]


def file_facts(arts: list[Artifact], staging) -> dict[str, dict]:
    """Each artifact's files, by its main file: their sha256, bytes, and bytes zipped with
    deflate (:func:`deflated_size`, as a bundle stores them). Once per artifact however
    many devices time it, on a thread per artifact up to ``runtimes._many.workers()``
    (which ``EDGEOPT_THREADS`` caps, as for the evaluation passes): zlib lets go of the
    GIL, and level 9 took 1.5 s over mobilenet-v2's four artifacts one by one."""
    from concurrent.futures import ThreadPoolExecutor

    from edgeopt.calibrate.pruning import deflated_size
    from edgeopt.convert import file_sha256
    from edgeopt.runtimes._many import workers

    def facts(art: Artifact) -> dict:
        files = [art.file, *art.companions]
        paths = [staging.path(f) for f in files]
        return {"digests": {f: file_sha256(p) for f, p in zip(files, paths, strict=True)},
                "size": sum(p.stat().st_size for p in paths), "zipped": deflated_size(paths)}

    with ThreadPoolExecutor(max(1, min(workers(), len(arts)))) as pool:
        return dict(zip([a.file for a in arts], pool.map(facts, arts), strict=True))


def artifact_record(art: Artifact, facts: dict[str, dict], target) -> ArtifactRecord:
    """``art``'s report record on ``target`` (None: no device runs it), before its
    benchmark figures; ``facts``: :func:`file_facts`."""
    mine = facts[art.file]
    return ArtifactRecord(
        path=art.file, files=[art.file, *art.companions], format=art.format,
        precision=art.precision, runtime=art.runtime,
        device=target.label if target else None, adapter=target.adapter if target else None,
        size_bytes=mine["size"], size_zipped_bytes=mine["zipped"],
        sha256=mine["digests"][art.file], sha256_files=mine["digests"],
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
