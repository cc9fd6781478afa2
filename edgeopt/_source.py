"""Resolve what the user named into a model, its inputs, and its calibration/evaluation data."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.convert import (
    SourceModel,
    check_inputs_fit,
    fix_onnx_shapes,
    load_model,
    onnx_input_specs,
    parse_input_shapes,
)
from edgeopt.errors import UsageError
from edgeopt.recipe import Recipe
from edgeopt.runtimes import row_cosines

REF_PREFIX = "ref:"
USER_EVAL_SAMPLES = 64


@dataclass
class Prepared:
    """Everything the pipeline needs about its input model, resolved and checked."""

    name: str
    source: SourceModel
    input_specs: list[tuple[str, str, tuple[int, ...]]]
    output_names: tuple[str, ...]
    calib: list[dict[str, np.ndarray]]
    calib_note: str
    eval_inputs: list[dict[str, np.ndarray]]
    eval_note: str
    metric: str
    reference: Any = None                      # ReferenceModel for ref:NAME
    eval_set: Any = None                       # its EvalSet
    fp32_outputs: np.ndarray | None = None     # source model's outputs on eval_inputs
    preprocessing: dict = field(default_factory=dict)

    def extra_metrics(self, outputs: np.ndarray, fp32_outputs: np.ndarray) -> dict:
        """Secondary figures beside the metric (e.g. embedding cosine to FP32)."""
        extra = getattr(self.reference, "extra_metrics", None)
        return dict(extra(outputs, fp32_outputs)) if callable(extra) else {}

    def score(self, outputs: np.ndarray, fp32_outputs: np.ndarray | None) -> float:
        """The run's metric of stacked first outputs, against the FP32 source where needed."""
        if self.reference is not None:
            return float(self.reference.score(outputs, self.eval_set, fp32_outputs))
        return mean_cosine(outputs, fp32_outputs)


def mean_cosine(outputs: np.ndarray, reference: np.ndarray | None) -> float:
    if reference is None:
        msg = "output cosine needs the FP32 outputs"
        raise ValueError(msg)
    return float(row_cosines(reference, outputs).mean())


def artifact_stem(spec: str) -> str:
    if spec.startswith(REF_PREFIX):
        return spec[len(REF_PREFIX):]
    if ":" in spec and not Path(spec).exists():
        return spec.rpartition(":")[2]
    return Path(spec).stem


def load_source(config: Recipe) -> SourceModel:
    """Load the model (no data yet); raises the convert/reference errors on bad input."""
    if config.model.startswith(REF_PREFIX):
        from edgeopt.reference_models import get_reference

        reference = get_reference(config.model[len(REF_PREFIX):])
        module = reference.build()
        shapes = parse_input_shapes(config.data.input_shape)
        import torch

        specs = reference.input_specs
        if len(specs) > 1 or specs[0][1] != "float32":
            # several or integer inputs (token ids): a real calibration sample is the example
            sample = reference.calibration_set(1)[0]
            example = tuple(torch.from_numpy(sample[name]) for name, _, _ in specs)
        elif shapes is None:
            example = (torch.zeros(reference.input_shape),)
        elif isinstance(shapes, tuple):
            example = (torch.zeros(shapes),)
        else:
            example = tuple(torch.zeros(s) for s in shapes.values())
        return SourceModel(config.model, "reference", module=module, example_inputs=example,
                           input_names=tuple(name for name, _, _ in specs),
                           output_names=(reference.output_name,),
                           extra={"reference": reference})
    source = load_model(config.model, config.data.input_shape)
    if source.kind == "openvino-ir":
        msg = (f"optimize takes an ONNX or PyTorch model, not OpenVINO IR ({config.model}); "
               "benchmark IR with 'edgeopt bench'")
        raise UsageError(msg)
    return source


def _specs_from_example(names: tuple[str, ...], example: tuple) -> list:
    return [(n, str(t.detach().numpy().dtype), tuple(int(d) for d in t.shape))
            for n, t in zip(names, example, strict=True)]


def prepare(config: Recipe, source: SourceModel) -> Prepared:
    """Check inputs fit and gather calibration/evaluation data, before anything is written."""
    from edgeopt.calibrate.data import RANDOM, random_samples
    from edgeopt.convert.torch_to_onnx import default_input_names

    name = artifact_stem(config.model)
    reference = source.extra.get("reference")
    if source.is_torch:
        check_inputs_fit(source.module, source.example_inputs, config.data.input_shape)
        names = source.input_names or default_input_names(source.module, len(source.example_inputs))
        specs = _specs_from_example(names, source.example_inputs)
    else:
        specs = list(onnx_input_specs(source.path))
        fixed = fix_onnx_shapes(specs, parse_input_shapes(config.data.input_shape), config.data.input_shape)
        specs = [(n, dtype, fixed[n]) for n, dtype, _ in specs]

    if reference is not None and config.data.calib is None:
        if config.data.input_shape and tuple(specs[0][2]) != tuple(reference.input_shape):
            msg = (f"--input-shape {config.data.input_shape} differs from {config.model}'s "
                   f"{'x'.join(map(str, reference.input_shape))}, and its data has that shape; "
                   "drop --input-shape or pass --calib")
            raise UsageError(msg)
        calib = reference.calibration_set(config.data.calib_samples)
        calib_note = f"reference calibration set of {config.model} ({len(calib)} samples)"
        eval_set = reference.evaluation_set(config.data.eval_samples)
        return Prepared(
            name, source, specs, source.output_names, calib, calib_note,
            list(eval_set.inputs), f"reference evaluation set ({len(eval_set.inputs)} samples, "
            "disjoint from calibration)", reference.metric, reference=reference,
            eval_set=eval_set, preprocessing=dict(reference.preprocessing),
        )
    if config.data.calib is None:
        msg = (f"no calibration data for {config.model}: pass --calib FILE_OR_FOLDER "
               "(.npy/.npz samples matching the model's inputs, or images with --preprocess), "
               "--calib package.module:factory, or --calib random "
               "(INT8 ranges from random data; accuracy then unknown)")
        raise UsageError(msg)
    if config.data.calib == RANDOM:
        n = config.data.calib_samples or 32
        calib = random_samples(specs, n, seed=0)
        eval_inputs = random_samples(specs, config.data.eval_samples or n, seed=1)
        calib_note = f"RANDOM data ({n} samples), as asked with --calib random"
        preprocessing = None
        eval_note = (f"random inputs ({len(eval_inputs)} samples): output cosine to FP32 only, "
                     "not task accuracy")
    else:
        found = _read_user_calibration(config, specs, reference)
        calib, calib_note, preprocessing = found.samples, found.note, found.preprocessing
        if reference is not None and tuple(specs[0][2]) == tuple(reference.input_shape):
            # The user's calibration data, the reference's own held-out set and metric:
            # evaluation never quietly moves to the calibration samples (issue 22, item 11).
            eval_set = reference.evaluation_set(config.data.eval_samples)
            return Prepared(
                name, source, specs, source.output_names, calib, calib_note,
                list(eval_set.inputs), f"reference evaluation set ({len(eval_set.inputs)} "
                "samples; calibration from --calib)", reference.metric, reference=reference,
                eval_set=eval_set, preprocessing=preprocessing or dict(reference.preprocessing))
        eval_inputs = calib[: config.data.eval_samples or USER_EVAL_SAMPLES]
        eval_note = (f"{len(eval_inputs)} of the calibration samples (no held-out set given): "
                     "output cosine to FP32")
    return Prepared(name, source, specs, source.output_names, calib, calib_note,
                    eval_inputs, eval_note, "output_cosine_vs_fp32",
                    preprocessing=preprocessing or {})


def _read_user_calibration(config: Recipe, specs: list, reference: Any):
    """--calib's samples; images take --preprocess, else a reference model's own preprocessing."""
    from edgeopt.calibrate.data import read_calibration
    from edgeopt.calibrate.images import reference_preprocess

    preprocess, origin = config.data.preprocess, "--preprocess"
    if preprocess is None and reference is not None:
        preprocess = reference_preprocess(reference.preprocessing, specs[0][2])
        origin = f"{config.model}'s preprocessing"
    found = read_calibration(config.data.calib, specs, config.data.calib_samples, preprocess)
    if found.preprocessing is None:
        if config.data.preprocess is not None:
            msg = (f"--preprocess applies to images, and --calib {config.data.calib} holds none; "
                   "drop --preprocess")
            raise UsageError(msg)
        return found
    return replace(found, note=f"{found.note} (from {origin})",
                   preprocessing={**found.preprocessing, "from": origin})
