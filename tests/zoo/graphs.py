"""Graph-level patterns: several inputs and outputs, a scalar input with control flow, and
models at the older opsets users bring."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo._export import export, save_graph, seeded


def _multi_class():
    import torch
    from torch import nn

    class TwoTowers(nn.Module):
        """An image and a float16 feature vector in; logits and an embedding out."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
            self.meta = nn.Linear(6, 16)
            self.embed = nn.Linear(32, 8)
            self.classify = nn.Linear(8, 5)

        def forward(self, image, features):
            a = self.conv(image).mean(dim=(2, 3))
            b = self.meta(features.to(torch.float32)).relu()
            embedding = self.embed(torch.cat([a, b], dim=1))
            return self.classify(embedding.relu()), embedding

    return TwoTowers


def build_multi_io(folder: Path) -> Path:
    """Two inputs (image float32, features float16), two outputs (logits, embedding)."""
    import torch

    seeded(9)
    example = (torch.randn(1, 3, 16, 16), torch.randn(1, 6).half())
    return export(_multi_class()(), example, folder / "multi_io.onnx",
                  ["image", "features"], ["logits", "embedding"])


def build_scalar_input(folder: Path) -> Path:
    """A voice-activity-style model: audio 1x256 and a 0-d int64 sample rate ``sr``; an
    ``If`` on ``sr == 16000`` picks the branch, as such models pick their resampling."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(10)

    def const(name: str, array: np.ndarray):
        return numpy_helper.from_array(array.astype(array.dtype), name)

    def branch(name: str, weight: np.ndarray):
        node = helper.make_node("MatMul", ["hidden", f"{name}_w"], [f"{name}_out"],
                                name=f"{name}_matmul")
        return helper.make_graph(
            [node], name, [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1, 1])],
            [const(f"{name}_w", weight)])

    w2a = rng.standard_normal((32, 1)).astype(np.float32) * 0.2
    w2b = rng.standard_normal((32, 1)).astype(np.float32) * 0.2
    nodes = [
        helper.make_node("MatMul", ["audio", "w1"], ["h1"], name="encoder"),
        helper.make_node("Add", ["h1", "b1"], ["h2"], name="encoder_bias"),
        helper.make_node("Relu", ["h2"], ["hidden"], name="encoder_relu"),
        helper.make_node("Equal", ["sr", "rate16k"], ["is16k"], name="is_16k"),
        helper.make_node("If", ["is16k"], ["logit"], name="rate_branch",
                         then_branch=branch("at16k", w2a), else_branch=branch("other", w2b)),
        helper.make_node("Sigmoid", ["logit"], ["speech"], name="speech_prob"),
    ]
    graph = helper.make_graph(
        nodes, "scalar_input",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 256]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("speech", TensorProto.FLOAT, [1, 1])],
        [const("w1", rng.standard_normal((256, 32)).astype(np.float32) * 0.1),
         const("b1", rng.standard_normal(32).astype(np.float32) * 0.1),
         const("rate16k", np.array(16000, np.int64))])
    return save_graph(folder / "scalar_input.onnx", graph)


def _old_opset_class():
    import torch
    from torch import nn

    class Classic(nn.Module):
        """Ops whose ONNX form changed after opset 12: Clip (ReLU6), Softmax, Squeeze and
        Unsqueeze (axes became an input), ReduceMean, Split, Resize."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, 1, 1)
            self.conv2 = nn.Conv2d(8, 8, 3, 2, 1)
            self.fc = nn.Linear(8, 6)

        def forward(self, x):
            x = nn.functional.relu6(self.conv1(x))
            x = nn.functional.interpolate(self.conv2(x), scale_factor=2.0, mode="nearest")
            a, b = torch.split(x, 4, dim=1)
            x = torch.cat([a.relu(), b.sigmoid()], dim=1)
            pooled = x.mean(dim=(2, 3), keepdim=True).squeeze(3).squeeze(2)
            return torch.softmax(self.fc(pooled).unsqueeze(1), dim=-1).squeeze(1)

    return Classic


def build_opset11(folder: Path) -> Path:
    """A small CNN exported at opset 11 (IR 6), as older exporters wrote it."""
    import torch

    seeded(11)
    return export(_old_opset_class()(), (torch.randn(1, 3, 16, 16),),
                  folder / "opset11.onnx", ["input"], ["probs"], opset=11)


def build_opset12(folder: Path) -> Path:
    """The same CNN exported at opset 12."""
    import torch

    seeded(12)
    return export(_old_opset_class()(), (torch.randn(1, 3, 16, 16),),
                  folder / "opset12.onnx", ["input"], ["probs"], opset=12)
