"""Each package's public names: exactly what its ``__all__`` lists, and every one resolves.

A name added to or removed from a package's ``__all__`` is an API change: update the pin
here in the same commit.
"""

from __future__ import annotations

import importlib

import pytest

PUBLIC_API: dict[str, list[str]] = {
    "edgeopt": sorted([
        "ArtifactRecord", "DataRecipe", "PackageRecipe", "PruneRecipe", "QuantRecipe", "Recipe",
        "Report", "__version__", "load_recipe", "optimize", "prune",
    ]),
    "edgeopt.backends": sorted([
        "BACKENDS", "Artifact", "Backend", "QuantJob", "TargetSpec", "get_backend",
        "onnx_runner", "package_targets", "runtime_names",
    ]),
    "edgeopt.calibrate": sorted([
        "CalibrationDataError", "CalibrationError", "CalibrationSet", "Preprocess",
        "PreprocessError", "QuantConfig", "QuantResult", "check_calibration", "check_finite",
        "integer_kernel_counts", "load_calibration", "parse_preprocess",
        "quantize_for_openvino", "quantize_onnx_for_ort", "random_samples", "read_calibration",
    ]),
    "edgeopt.convert": sorted([
        "OPS_CONFIG", "ConvertError", "ExportError", "ExportResult", "FactoryError",
        "InputShapeError", "ModelLoadError", "SourceModel", "call_factory", "canonical_names",
        "check_inputs_fit",
        "default_input_names", "export_onnx", "file_sha256", "fix_onnx_shapes", "load_model",
        "onnx_input_specs", "parse_input_shapes", "run_torch", "to_openvino_ir", "to_ort",
        "upgrade_opset", "widen_4bit",
    ]),
    "edgeopt.search": sorted(["SearchSettings", "load_space", "search"]),
    "edgeopt.reference_models": sorted([
        "REFERENCE_MODELS", "EvalSet", "ReferenceModel", "UnknownReferenceModel",
        "get_reference", "list_references",
    ]),
    "edgeopt.runtimes": sorted([
        "ADAPTERS", "ADAPTER_ALIASES", "AdapterUnavailable", "Availability", "BenchProtocol",
        "OPENVINO_F32", "capture_onnx", "capture_openvino", "onnx_input_specs",
        "optimized_op_counts", "read_openvino_model",
        "BenchResult", "ComparisonError", "ComputeUnit", "DeviceCatalog", "DeviceProfile",
        "DeviceProfileError", "InvalidDeviceProfiles", "InvalidProtocol", "Loaded",
        "ModelLoadFailed", "OutputDiff", "Parity", "ParityError", "RuntimeAdapter",
        "RuntimeAdapterError", "StaticShapesRequired", "TensorSpec", "UnknownAdapter",
        "UnknownDevice", "absent_reason", "check", "compare", "cosine", "first_line",
        "get_adapter", "load_devices", "max_abs_diff", "output_diff", "peak_abs",
        "row_cosines", "run_benchmark", "short_reason",
    ]),
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC_API))
def test_all_is_pinned_and_resolves(module_name):
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == PUBLIC_API[module_name]
    assert len(set(module.__all__)) == len(module.__all__), "a name listed twice"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names what it does not define: {missing}"
