"""Resolve what the user named into a model, its inputs, and its calibration/evaluation data."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
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
from edgeopt.metrics import BUILTIN, resolve_metric
from edgeopt.recipe import Recipe

REF_PREFIX = "ref:"


@dataclass
class Prepared:
    """Everything the pipeline needs about its input model, resolved and checked."""

    name: str
    source: SourceModel
    input_specs: list[tuple[str, str, tuple[int, ...]]]
    output_names: tuple[str, ...]
    calib: Sequence[dict[str, np.ndarray]]     # calibrate.spill.SpilledSamples: on disk,
    calib_note: str                            # read back one sample at a time
    eval_inputs: Sequence[dict[str, np.ndarray]]
    eval_note: str
    metric: str
    reference: Any = None                      # ReferenceModel for ref:NAME
    eval_set: Any = None                       # its EvalSet
    fp32_outputs: np.ndarray | None = None     # source model's outputs on eval_inputs
    preprocessing: dict = field(default_factory=dict)
    labels: np.ndarray | None = None           # one task label per evaluation sample
    chosen: Any = None                         # --metric: an edgeopt.metrics.Metric
    states: dict[str, str] = field(default_factory=dict)   # state input -> its output

    @property
    def task_metric(self) -> bool:
        """The metric measures the task (against labels), not closeness to FP32."""
        if self.chosen is not None:
            return self.chosen.needs_labels or (self.labels is not None
                                                and self.chosen.name not in BUILTIN)
        if self.reference is not None and self.eval_set is not None:
            return self.reference.metric in TASK_METRICS
        return self.labels is not None

    @property
    def higher_is_better(self) -> bool:
        return self.chosen is None or self.chosen.higher_is_better

    def extra_metrics(self, outputs: np.ndarray, fp32_outputs: np.ndarray) -> dict:
        """Secondary figures beside the metric: a reference model's own (e.g. embedding
        cosine to FP32) and, for classifiers with labels, top-1/top-5 and agreement."""
        extra = getattr(self.reference, "extra_metrics", None)
        figures = dict(extra(outputs, fp32_outputs)) if callable(extra) else {}
        rows = outputs.reshape(len(outputs), -1)
        if self.labels is not None and rows.shape[1] >= 2 and _integral(self.labels):
            figures["top1"] = round(BUILTIN["top1"](rows, None, self.labels), 6)
            if rows.shape[1] >= 5:
                figures["top5"] = round(BUILTIN["top5"](rows, None, self.labels), 6)
            figures["agreement"] = round(BUILTIN["agreement"](rows, fp32_outputs, None), 6)
        return figures

    def score(self, outputs: np.ndarray, fp32_outputs: np.ndarray | None) -> float:
        """The run's metric of stacked first outputs, against the FP32 source where needed."""
        if self.chosen is not None:
            return self.chosen(outputs, fp32_outputs, self.labels)
        if self.reference is not None and self.eval_set is not None:
            return float(self.reference.score(outputs, self.eval_set, fp32_outputs))
        if self.labels is not None and _integral(self.labels):
            return BUILTIN["top1"](outputs, fp32_outputs, self.labels)
        return BUILTIN["cosine"](outputs, fp32_outputs, None)


TASK_METRICS = ("accuracy", "lee_pearson")


def _integral(labels: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(labels).dtype, np.integer)


def artifact_stem(spec: str) -> str:
    """The name artifacts take from a model spec: ``ref:NAME`` -> NAME, a file -> its stem,
    ``pkg.mod:build`` -> ``mod`` (the factory's module: ``build`` names no model)."""
    if spec.startswith(REF_PREFIX):
        return spec[len(REF_PREFIX):]
    if ":" in spec and not Path(spec).exists():
        return spec.rpartition(":")[0].rpartition(".")[2]
    return Path(spec).stem


def run_name(recipe: Recipe) -> str:
    """The run's artifact name: ``--name``, else the model's (:func:`artifact_stem`)."""
    return recipe.name or artifact_stem(recipe.model)


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


def _image_size(specs: list, shapes, preprocess):
    """``shapes`` (from --input-shape) with the size --preprocess gives (its crop, or a
    resize to HxW) for the one 4-d input whose size is dynamic and not given, batch 1."""
    if preprocess is None or isinstance(shapes, tuple):
        return shapes
    from edgeopt.calibrate.images import parse_preprocess

    pre = parse_preprocess(preprocess)
    shapes = dict(shapes or {})
    images = [(n, s) for n, _, s in specs if len(s) == 4 and n not in shapes
              and any(not isinstance(d, int) or d <= 0 for d in s)]
    if pre.output_size is None or len(images) != 1:
        return shapes or None
    name, dims = images[0]
    height, width = pre.output_size
    wanted = ((1, pre.channels, height, width) if pre.layout == "nchw"
              else (1, height, width, pre.channels))
    shapes[name] = tuple(d if isinstance(d, int) and d > 0 else w
                         for d, w in zip(dims, wanted, strict=True))
    return shapes


def _specs_from_example(names: tuple[str, ...], example: tuple) -> list:
    return [(n, str(t.detach().numpy().dtype), tuple(int(d) for d in t.shape))
            for n, t in zip(names, example, strict=True)]


def torch_specs(source: SourceModel, input_shape) -> list:
    """A PyTorch model's input specs (name, dtype, shape), once its example inputs are
    checked to fit ``input_shape`` (here, or in edgeopt._torch_side's child)."""
    from edgeopt.convert.torch_to_onnx import default_input_names

    check_inputs_fit(source.module, source.example_inputs, input_shape)
    names = source.input_names or default_input_names(source.module, len(source.example_inputs))
    return _specs_from_example(names, source.example_inputs)


def prepare(config: Recipe, source: SourceModel) -> Prepared:
    """Check inputs fit and gather calibration/evaluation data, before anything is written."""
    name = run_name(config)
    reference = source.extra.get("reference")
    if source.is_torch and "specs" in source.extra:    # checked in edgeopt._torch_side
        if source.extra["fit_error"] is not None:
            from edgeopt._torch_side import _rebuilt

            raise _rebuilt(*source.extra["fit_error"])
        specs = source.extra["specs"]
    elif source.is_torch:
        specs = torch_specs(source, config.data.input_shape)
    else:
        specs = list(onnx_input_specs(source.path))
        shapes = _image_size(specs, parse_input_shapes(config.data.input_shape),
                             config.data.preprocess)
        fixed = fix_onnx_shapes(specs, shapes, config.data.input_shape)
        specs = [(n, dtype, fixed[n]) for n, dtype, _ in specs]

    if reference is not None and config.data.calib is None:
        prepared = _reference_data(config, source, specs, reference, name)
    else:
        prepared = _user_data(config, source, specs, reference, name)
    if source.kind == "onnx":
        from edgeopt._states import onnx_output_specs, state_pairs

        prepared.states = state_pairs(specs, onnx_output_specs(source.path))
    if config.data.metric is None:
        return prepared
    chosen = resolve_metric(config.data.metric, prepared.labels is not None)
    return replace(prepared, chosen=chosen, metric=chosen.name)


def _reference_data(config: Recipe, source, specs: list, reference, name: str) -> Prepared:
    """A reference model's own calibration set, and its evaluation set or --eval's."""
    if config.data.input_shape and tuple(specs[0][2]) != tuple(reference.input_shape):
        msg = (f"--input-shape {config.data.input_shape} differs from {config.model}'s "
               f"{'x'.join(map(str, reference.input_shape))}, and its data has that shape; "
               "drop --input-shape or pass --calib")
        raise UsageError(msg)
    calib = reference.calibration_set(config.data.calib_samples)
    calib_note = f"reference calibration set of {config.model} ({len(calib)} samples)"
    preprocessing = dict(reference.preprocessing)
    if config.data.eval is not None:
        from edgeopt.calibrate.datasets import Dataset, check_disjoint

        held_out = _held_out(config, specs, _preprocess_for(config, specs, reference)[0])
        check_disjoint(Dataset(calib, None, calib_note), held_out, config.data.eval)
        return Prepared(name, source, specs, source.output_names, calib, calib_note,
                        held_out.samples, held_out.note, _generic_metric(held_out.labels),
                        reference=reference, preprocessing=preprocessing,
                        labels=held_out.labels)
    eval_set = reference.evaluation_set(config.data.eval_samples)
    labelled = ", labelled" if eval_set.labels is not None else ""
    return Prepared(
        name, source, specs, source.output_names, calib, calib_note, eval_set.inputs,
        f"reference evaluation set ({len(eval_set.inputs)} samples{labelled}, disjoint from "
        f"calibration): {reference.description}", reference.metric, reference=reference,
        eval_set=eval_set, preprocessing=preprocessing, labels=eval_set.labels)


def _user_data(config: Recipe, source, specs: list, reference, name: str) -> Prepared:
    """--calib's data and --eval's, or a seeded split of --calib's when no --eval is given."""
    from edgeopt.calibrate.data import RANDOM, iter_random_samples
    from edgeopt.calibrate.datasets import check_disjoint, read_dataset, read_split
    from edgeopt.calibrate.spill import spill

    data = config.data
    if data.calib is None:
        msg = (f"no calibration data for {config.model}: pass --calib FILE_OR_FOLDER "
               "(.npy/.npz samples matching the model's inputs, or images with --preprocess), "
               "--calib package.module:factory, or --calib random "
               "(INT8 ranges from random data; accuracy then unknown)")
        raise UsageError(msg)
    preprocess, origin = _preprocess_for(config, specs, reference)
    if data.calib == RANDOM:
        n = data.calib_samples or 32
        calib = spill(iter_random_samples(specs, n, seed=0))
        calib_note = f"RANDOM data ({n} samples), as asked with --calib random"
        if data.eval is None:
            inputs = spill(iter_random_samples(specs, data.eval_samples or n, seed=1))
            note = (f"random inputs ({len(inputs)} samples): output cosine to FP32 only, not "
                    "task accuracy")
            return Prepared(name, source, specs, source.output_names, calib, calib_note,
                            inputs, note, "output_cosine_vs_fp32", reference=reference)
        held_out = _held_out(config, specs, preprocess)
        return Prepared(name, source, specs, source.output_names, calib, calib_note,
                        held_out.samples, held_out.note, _generic_metric(held_out.labels),
                        reference=reference, labels=held_out.labels)
    keeps_reference = (reference is not None and data.eval is None
                       and tuple(specs[0][2]) == tuple(reference.input_shape))
    if data.eval is not None or keeps_reference:
        found = read_dataset(data.calib, specs, data.calib_samples, preprocess, "calibration")
        if keeps_reference:     # the user's calibration data, the reference's held-out set
            return _with_reference_eval(config, source, specs, reference, name, found, origin)
        held_out = _held_out(config, specs, preprocess)
        check_disjoint(found, held_out, data.eval)
    else:
        found, held_out = read_split(data.calib, specs, data.calib_samples, data.eval_samples,
                                     preprocess)
    if found.preprocessing is None and data.preprocess is not None:
        msg = (f"--preprocess applies to images, and --calib {data.calib} holds none; "
               "drop --preprocess")
        raise UsageError(msg)
    preprocessing = {**found.preprocessing, "from": origin} if found.preprocessing else {}
    calib_note = found.note + (f" (from {origin})" if found.preprocessing else "")
    return Prepared(name, source, specs, source.output_names, found.samples, calib_note,
                    held_out.samples, held_out.note, _generic_metric(held_out.labels),
                    reference=reference, preprocessing=preprocessing, labels=held_out.labels)


def _with_reference_eval(config: Recipe, source, specs: list, reference, name: str, found,
                         origin: str) -> Prepared:
    """--calib's samples with a reference model's own held-out set and metric: evaluation
    never moves to the calibration samples."""
    eval_set = reference.evaluation_set(config.data.eval_samples)
    preprocessing = ({**found.preprocessing, "from": origin} if found.preprocessing
                     else dict(reference.preprocessing))
    labelled = ", labelled" if eval_set.labels is not None else ""
    return Prepared(
        name, source, specs, source.output_names, found.samples,
        found.note + (f" (from {origin})" if found.preprocessing else ""),
        eval_set.inputs, f"reference evaluation set ({len(eval_set.inputs)} samples"
        f"{labelled}; calibration from --calib): {reference.description}", reference.metric,
        reference=reference, eval_set=eval_set, preprocessing=preprocessing,
        labels=eval_set.labels)


def _held_out(config: Recipe, specs: list, preprocess):
    from edgeopt.calibrate.datasets import read_dataset

    return read_dataset(config.data.eval, specs, config.data.eval_samples, preprocess)


def _generic_metric(labels) -> str:
    return "top1" if labels is not None and _integral(labels) else "output_cosine_vs_fp32"


def _preprocess_for(config: Recipe, specs: list, reference: Any) -> tuple[Any, str]:
    """--preprocess, else a reference model's own preprocessing for its image input."""
    from edgeopt.calibrate.images import reference_preprocess

    if config.data.preprocess is None and reference is not None:
        return (reference_preprocess(reference.preprocessing, specs[0][2]),
                f"{config.model}'s preprocessing")
    return config.data.preprocess, "--preprocess"


def copy_onnx(source, dst: Path) -> tuple[int, int] | None:
    """A standalone copy of the user's ONNX, as upgraded to a supported opset and IR
    version when it was loaded; returns (old, new) opset when it was upgraded."""
    import onnx

    proto = source.extra.get("upgraded")
    if proto is None:
        proto = onnx.load(str(source.path))  # pulls external data in: the copy stands alone
    if proto.ByteSize() < 1_800_000_000:
        onnx.save(proto, str(dst))
    else:
        shutil.copyfile(source.path, dst)
    found = source.extra.get("opset")
    new = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return (found, new) if found is not None and new != found else None
