"""A zoo of small architectures built in code, each a pattern real models use.

``ZOO`` is the registry: every ``build_NAME`` function of the zoo's modules is one entry
``NAME``, and tests/zoo/test_zoo.py runs every entry through ``edgeopt.optimize`` on both
runtimes (a builder missing from ``ZOO`` fails that test). A builder writes its model into
a folder and returns what ``optimize`` takes: an ONNX path or a ``package.module:factory``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from zoo import graphs, sequence, vision

MODULES = (vision, sequence, graphs)


@dataclass(frozen=True)
class ZooModel:
    build: Callable[[Path], Path | str]
    covers: tuple[str, ...]                    # the patterns of issue 20 it stands for
    input_shape: str | None = None             # only where the model does not say
    calib: str = "random"
    state_inputs: tuple[str, ...] = ()         # the report must name these as state
    noted_ops: tuple[str, ...] = ()            # ops each INT8 artifact's notes must name


ZOO: dict[str, ZooModel] = {
    "resnet_bn": ZooModel(vision.build_resnet_bn, ("residual CNN", "BatchNorm",
                                                   "PyTorch factory")),
    "mobile_se": ZooModel(vision.build_mobile_se, ("depthwise-separable", "squeeze-excite",
                                                   "hard-swish")),
    "transformer": ZooModel(sequence.build_transformer, ("attention", "LayerNorm",
                                                         "int64 input", "bool input")),
    "lstm_state": ZooModel(sequence.build_lstm_state, ("LSTM", "state in/out"),
                           state_inputs=("h", "c"), noted_ops=("LSTM",)),
    "gru_state": ZooModel(sequence.build_gru_state, ("GRU", "state in/out"),
                          calib="zoo.data:gru_chunks", state_inputs=("state",),
                          noted_ops=("GRU",)),
    "audio_conv1d": ZooModel(sequence.build_audio_conv1d, ("1-D conv audio",)),
    "detection_head": ZooModel(vision.build_detection_head, ("Sigmoid scores",
                                                             "box regression", "Concat")),
    "unet": ZooModel(vision.build_unet, ("upsample", "skip concat")),
    "multi_io": ZooModel(graphs.build_multi_io, ("multi-input", "multi-output",
                                                 "float16 input")),
    "scalar_input": ZooModel(graphs.build_scalar_input, ("scalar input", "If"),
                             calib="zoo.data:vad_chunks", noted_ops=("If",)),
    "opset11": ZooModel(graphs.build_opset11, ("opset 11",)),
    "opset12": ZooModel(graphs.build_opset12, ("opset 12",)),
    "dynamic_detector": ZooModel(vision.build_dynamic_detector, ("dynamic axes",),
                                 input_shape="images=1,3,32,32"),
}
