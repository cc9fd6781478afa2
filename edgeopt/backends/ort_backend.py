"""ONNX Runtime: the FP32 ONNX as exported, and a QDQ INT8 graph its CPU EP fuses into
integer kernels (``edgeopt.calibrate.quantize``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edgeopt.backends.base import Artifact, Backend, QuantJob, TargetSpec, quant_record

_CPU_EP = ("ort-cpu", "ort-arm")


class OrtBackend(Backend):
    runtime = "onnxruntime"
    label = "ONNX Runtime"
    host_adapter = "ort-cpu"
    format = "onnx"
    libraries = ("onnxruntime",)
    emulation_adapter = "ort-arm"
    supports_qat = True
    package_targets = {
        "android": TargetSpec(runtime, "ort", "ort-cpu",
                              "ONNX Runtime Mobile (onnxruntime-android) or a reduced build"),
        "ios": TargetSpec(runtime, "ort", "ort-cpu",
                          "ONNX Runtime Mobile (onnxruntime-objc / onnxruntime-c pods) or a "
                          "reduced build"),
        "linux-arm": TargetSpec(runtime, "onnx", "ort-cpu",
                                "ONNX Runtime's CPU EP on aarch64 (pip install onnxruntime)"),
    }
    # The mobile/ARM models are for the CPU EP.
    bundle_adapters = {"ort": _CPU_EP, "onnx": _CPU_EP}

    def artifact_files(self, name: str, precision: str) -> tuple[str, ...]:
        return (f"{name}.fp32.onnx",) if precision == "fp32" else (f"{name}.int8-ort.onnx",)

    def warm_up(self, quant) -> None:
        """ONNX and ONNX Runtime's quantization tools (about 1.4 s of imports on a 2-core
        Xeon), while the PyTorch child exports."""
        import onnx  # noqa: F401
        import onnxruntime.quantization  # noqa: F401

    def quantize(self, job: QuantJob) -> Artifact:
        from edgeopt.calibrate import quantize_onnx_for_ort

        out = job.path(job.int8_files(self)[0])
        samples, note = _qat_data(job.prepared) if job.config.qat_epochs else (None, "")
        with job.steps.step(job.step("quantize INT8 for ONNX Runtime")) as update:
            q = quantize_onnx_for_ort(job.fp32_onnx, out, job.prepared.calib, job.config, update,
                                      stats=job.stats, qat_samples=samples, qat_note=note,
                                      sqnr=job.layer_sqnr)
        return Artifact(out.name, self.format, "int8", self.runtime,
                        quantization=quant_record(q, job, q.integer_kernels),
                        sensitivity=self.sensitivity_from(q.layer_sqnr))

    def layer_sqnr(self, artifact: Path, job: QuantJob) -> list[dict] | None:
        """The rows ``job``'s build leaves out with ``job.layer_sqnr`` False, from the file."""
        from edgeopt.calibrate.quantize import artifact_layer_sqnr

        return list(artifact_layer_sqnr(job.fp32_onnx, artifact, job.prepared.calib,
                                        job.config, job.stats))

    def sensitivity_from(self, rows) -> tuple:
        """Node groups by the SQNR each loses (``calibrate.sensitivity.sensitivity_order``)."""
        from edgeopt.calibrate.quantize import sensitivity_order

        return tuple(sensitivity_order(rows))

    def integer_kernels(self, artifact: Path) -> dict[str, int]:
        from edgeopt.calibrate.quantize import integer_kernel_counts

        return integer_kernel_counts(artifact)

    def sensitivity(self, art: Artifact, job: QuantJob) -> list[tuple[str, ...]]:
        """From the per-layer SQNR of a QDQ graph with nothing excluded (a probe, removed)."""
        from edgeopt.calibrate import quantize_onnx_for_ort

        if art.sensitivity:
            return list(art.sensitivity)
        probe = job.path(".sensitivity-probe.onnx")
        try:
            q = quantize_onnx_for_ort(job.fp32_onnx, probe, job.prepared.calib,
                                      replace(job.config, exclude_nodes=(), qat_epochs=0),
                                      stats=job.stats)
        finally:
            probe.unlink(missing_ok=True)
        return list(self.sensitivity_from(q.layer_sqnr))

    def speed_choices(self, art: Artifact, job: QuantJob) -> list:
        """The FP32 stem (``calibrate.qdq_graph.stem_block``), when this build kept one,
        and the AVX2 saturation guard."""
        import onnx

        from edgeopt.calibrate.quantize import stem_block
        from edgeopt.tradeoffs import Choice, guard_choice

        excluded = set((art.quantization or {}).get("excluded_nodes", ()))
        stem = [n for n in stem_block(onnx.load(str(job.fp32_onnx)))
                if n in excluded and n not in job.config.exclude_nodes]
        choices = [Choice("fp32-stem", f"the stem ({len(stem)} convolutions) kept FP32",
                          {"fp32_stem": False}, tuple(stem))] if job.config.fp32_stem and stem else []
        return choices + guard_choice(art, job.config)


def _qat_data(prepared):
    """A reference model's fine-tuning set (disjoint from its calibration and evaluation
    sets), else the calibration samples."""
    reference = prepared.reference
    if reference is not None and reference.has_finetune_set:
        inputs, _labels = reference.finetune_set()
        return inputs, f"{prepared.source.spec}'s fine-tuning set"
    return prepared.calib, "the calibration samples"
