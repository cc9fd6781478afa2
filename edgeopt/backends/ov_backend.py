"""OpenVINO: the ONNX export converted to IR, and NNCF's INT8 of the OpenVINO model with
edgeopt's activation ranges (``edgeopt.calibrate.quantize_ov``)."""

from __future__ import annotations

from pathlib import Path

from edgeopt.backends.base import Artifact, Backend, QuantJob, TargetSpec, quant_record


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

    def warm_up(self) -> None:
        """NNCF and its OpenVINO post-training pipeline (~2 s of imports on a 2-core
        Xeon), with torch hidden as :meth:`quantize` hides it, while the PyTorch child
        exports."""
        from edgeopt._torch_side import without_torch

        with without_torch():
            import nncf.openvino.quantization.quantize_model  # noqa: F401
            import nncf.quantization.algorithms.post_training.pipeline  # noqa: F401

    def quantize(self, job: QuantJob) -> Artifact:
        from edgeopt._torch_side import without_torch
        from edgeopt.calibrate import quantize_for_openvino
        from edgeopt.convert import canonical_names

        xml, bin_ = job.int8_files(self)
        fp32_xml = job.path(self.artifact_files(job.name, "fp32")[0])
        with job.steps.step(job.step("quantize INT8 for OpenVINO (NNCF)")) as update, \
                without_torch():                # NNCF would import it, needlessly
            q = quantize_for_openvino(fp32_xml, job.path(xml), job.prepared.calib, job.config,
                                      update, stats=job.stats, fp32_onnx=job.fp32_onnx,
                                      before_save=canonical_names, sqnr=job.layer_sqnr)
        return Artifact(xml, self.format, "int8", self.runtime, companions=(bin_,),
                        quantization=quant_record(q, job, getattr(q, "integer_kernels", None)))

    def layer_sqnr(self, artifact: Path, job: QuantJob) -> list[dict] | None:
        """The rows ``job``'s build leaves out with ``job.layer_sqnr`` False, from the files."""
        from edgeopt.calibrate.ov_sqnr import artifact_layer_sqnr_ov

        fp32_xml = job.path(self.artifact_files(job.name, "fp32")[0])
        return list(artifact_layer_sqnr_ov(fp32_xml, artifact, job.prepared.calib))

    def speed_choices(self, art: Artifact, job: QuantJob) -> list:
        """The AVX2 saturation guard on NNCF's int8 weights."""
        from edgeopt.tradeoffs import guard_choice

        return guard_choice(art, job.config)

    def sensitivity(self, art: Artifact, job: QuantJob) -> list[tuple[str, ...]]:
        """Borrowed from ONNX Runtime's QDQ probe: the IR's names derive from the ONNX nodes."""
        from edgeopt.backends import get_backend

        if art.sensitivity:
            return list(art.sensitivity)
        return get_backend("onnxruntime").sensitivity(Artifact("", "", "", ""), job)
