"""OpenVINO: the ONNX export converted to IR, and the INT8 IR: the ONNX Runtime QDQ model
converted, or NNCF's INT8 of the OpenVINO model with edgeopt's activation ranges
(``edgeopt.calibrate.ov_route`` says which, ``edgeopt.calibrate.quantize_ov``)."""

from __future__ import annotations

from pathlib import Path

from edgeopt.backends.base import Artifact, Backend, QuantJob, TargetSpec, quant_record

QDQ_NOTE = "OpenVINO IR converted from that QDQ model"   # the QDQ route's note


class OvBackend(Backend):
    runtime = "openvino"
    label = "OpenVINO"
    host_adapter = "ov-cpu"
    format = "openvino-ir"
    libraries = ("openvino", "nncf")
    compiles_whole = True           # OpenVINO compiles a model for one device or not at all
    package_targets = {"openvino": TargetSpec(runtime, "openvino-ir", "ov-cpu",
                                              "OpenVINO runtime")}

    def artifact_files(self, name: str, precision: str) -> tuple[str, ...]:
        stem = f"{name}.fp32" if precision == "fp32" else f"{name}.int8-ov"
        return f"{stem}.xml", f"{stem}.bin"

    def build_fp32(self, name: str, fp32_onnx: Path, staging, steps, check_parity):
        from edgeopt.convert import to_openvino_ir

        xml, bin_ = self.artifact_files(name, "fp32")
        step = "ONNX -> OpenVINO IR"
        with steps.step(step):
            to_openvino_ir(fp32_onnx, staging.path(xml))
            parity = check_parity(step, staging.path(xml))
        art = Artifact(xml, self.format, "fp32", self.runtime, companions=(bin_,))
        return art, {"name": step, "parity": parity}

    def warm_up(self, quant) -> None:
        """NNCF and its OpenVINO post-training pipeline (~2 s of imports on a 2-core
        Xeon), with torch hidden as :meth:`quantize` hides it, while the PyTorch child
        exports: only for ``--ov-int8 nncf``. Under ``auto`` most graphs take the QDQ
        route, and the imports competed with the export for the cores (measured: 0.2-1.6 s
        of a mobilenet-v2 build, 1-2.5 CPU-s); a graph that takes NNCF imports it then."""
        from edgeopt._torch_side import without_torch

        if quant.ov_int8 != "nncf":
            return

        with without_torch():
            import nncf.openvino.quantization.quantize_model  # noqa: F401
            import nncf.quantization.algorithms.post_training.pipeline  # noqa: F401

    def quantize(self, job: QuantJob) -> Artifact:
        """The INT8 IR by the route ``job.config.ov_int8`` names (``calibrate.ov_route``):
        the ONNX Runtime QDQ model converted, or NNCF on the OpenVINO model."""
        route, why = _route(job)
        if route == "qdq":
            return self._from_qdq(job, why)
        return self._nncf(job, why)

    def _from_qdq(self, job: QuantJob, why: str) -> Artifact:
        """The ONNX Runtime quantizer's QDQ model for ``job`` (the same build when that
        backend made it in this process already; without fine-tuning, which is ONNX
        Runtime's alone), converted to IR: the same int8 weights and activation ranges, and
        the same per-layer SQNR (measured on the QDQ model)."""
        from dataclasses import replace

        from edgeopt.convert import to_openvino_ir

        xml, bin_ = job.int8_files(self)
        with job.steps.step(job.step("quantize INT8 for OpenVINO (QDQ)")) as update:
            q = _qdq_build(job, update, lambda qdq: to_openvino_ir(qdq, job.path(xml)))
        q = replace(q, notes=(*q.notes, f"{QDQ_NOTE} ({why}; --ov-int8 nncf for NNCF's): "
                                        "its int8 weights and activation ranges as they are"))
        return Artifact(xml, self.format, "int8", self.runtime, companions=(bin_,),
                        quantization=quant_record(q, job))

    def _nncf(self, job: QuantJob, why: str) -> Artifact:
        from dataclasses import replace

        from edgeopt._torch_side import without_torch
        from edgeopt.calibrate import quantize_for_openvino
        from edgeopt.convert import canonical_names

        xml, bin_ = job.int8_files(self)
        with job.steps.step(job.step("quantize INT8 for OpenVINO (NNCF)")) as update, \
                without_torch():                # NNCF would import it, needlessly
            q = quantize_for_openvino(self._fp32_xml(job), job.path(xml), job.prepared.calib,
                                      job.config, update, stats=job.stats,
                                      fp32_onnx=job.fp32_onnx, before_save=canonical_names,
                                      sqnr=job.layer_sqnr)
        q = replace(q, notes=(*q.notes, f"NNCF for OpenVINO: {why}"))
        return Artifact(xml, self.format, "int8", self.runtime, companions=(bin_,),
                        quantization=quant_record(q, job, getattr(q, "integer_kernels", None)))

    def _fp32_xml(self, job: QuantJob) -> Path:
        return job.path(self.artifact_files(job.name, "fp32")[0])

    def layer_sqnr(self, artifact: Path, job: QuantJob) -> list[dict] | None:
        """The rows ``job``'s build leaves out with ``job.layer_sqnr`` False: the QDQ
        model's (made again, or the memo's), or measured on the files."""
        from dataclasses import replace

        from edgeopt.calibrate.ov_sqnr import artifact_layer_sqnr_ov

        if _route(job)[0] == "qdq":
            return list(_qdq_build(replace(job, layer_sqnr=True), None, None).layer_sqnr)
        return list(artifact_layer_sqnr_ov(self._fp32_xml(job), artifact, job.prepared.calib))

    def follows(self, job: QuantJob) -> str | None:
        """ONNX Runtime's, on the QDQ route (``calibrate.ov_route``)."""
        return "onnxruntime" if _route(job)[0] == "qdq" else None

    def speed_choices(self, art: Artifact, job: QuantJob) -> list:
        """The AVX2 saturation guard; on the QDQ route, also ONNX Runtime's FP32 stem."""
        from edgeopt.backends import get_backend
        from edgeopt.tradeoffs import guard_choice

        if _route(job)[0] == "qdq":
            return get_backend("onnxruntime").speed_choices(art, job)
        return guard_choice(art, job.config)

    def sensitivity(self, art: Artifact, job: QuantJob) -> list[tuple[str, ...]]:
        """Borrowed from ONNX Runtime's QDQ probe: the IR's names derive from the ONNX nodes."""
        from edgeopt.backends import get_backend

        if art.sensitivity:
            return list(art.sensitivity)
        return get_backend("onnxruntime").sensitivity(Artifact("", "", "", ""), job)


def _route(job: QuantJob) -> tuple[str, str]:
    """("qdq" or "nncf", why) for ``job``'s INT8 (``calibrate.ov_route``)."""
    from edgeopt.calibrate.ov_route import ov_int8_route

    return ov_int8_route(job.fp32_onnx, job.config.ov_int8)


def _qdq_build(job: QuantJob, update, use) -> object:
    """The ONNX Runtime quantizer's result for ``job`` (fine-tuning left out), its QDQ
    model in a scratch file while ``use(path)`` runs (when given), removed after."""
    from dataclasses import replace

    from edgeopt.calibrate import quantize_onnx_for_ort

    qdq = job.staging.scratch / f"{job.name}.{job.variant or 'int8'}.qdq.onnx"
    try:
        q = quantize_onnx_for_ort(job.fp32_onnx, qdq, job.prepared.calib,
                                  replace(job.config, qat_epochs=0), update, stats=job.stats,
                                  sqnr=job.layer_sqnr)
        if use is not None:
            use(qdq)
        return q
    finally:
        qdq.unlink(missing_ok=True)
