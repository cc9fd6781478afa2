"""Tiny models built in code for tests (importable as 'tiny_models:NAME' factory specs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _save(path: Path, name: str, nodes: list, inits: list, output: tuple[str, list],
          inputs: list[tuple[str, list]] | None = None) -> Path:
    """A checked opset-17 model (default: one 1x3x8x8 float input), saved to ``path``."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims)
         for n, dims in (inputs or [("input", [1, 3, 8, 8])])],
        [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, output[1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def save_tiny_onnx(path: Path, seed: int = 0) -> Path:
    """Conv(3->8) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(8->4), input 1x3x8x8."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1, name="fc"),
    ]
    return _save(path, "tiny", nodes, inits, ("logits", [1, 4]))


def _tiny_cnn_class():
    import torch
    from torch import nn

    class TinyCnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
            self.bn2 = nn.BatchNorm2d(16)
            self.fc = nn.Linear(16, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            return self.fc(x.mean(dim=(2, 3)))

    return TinyCnn


def tiny_cnn():
    """A small CNN on 1x3x16x16 inputs; pass --input-shape 1,3,16,16."""
    import torch

    torch.manual_seed(0)
    return _tiny_cnn_class()().eval()


def tiny_cnn_with_example():
    """The same CNN, returned with its example inputs (no --input-shape needed)."""
    import torch

    return tiny_cnn(), (torch.randn(1, 3, 16, 16),)


def not_a_module():
    return {"weights": [1, 2, 3]}


def save_outlier_onnx(path: Path, seed: int = 0) -> Path:
    """Conv(3->8, 3x3) -> Conv(8->8, 1x1) whose channel 0 is ~1000x the others -> Conv(8->4,
    1x1) that ignores channel 0. One per-tensor 8-bit range for the middle tensor leaves the
    small channels a handful of levels, so plain INT8 breaks the output; the middle convs in
    FP32 fix it. Input 1x3x8x8, output 1x4x8x8."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3
    w1[0] *= 3000.0
    w2 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    w2[:, 0] = 0.0
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w0"),
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["a"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Conv", ["a", "w1"], ["b"], name="conv_outlier"),
        helper.make_node("Conv", ["b", "w2"], ["output"], name="conv_reader"),
    ]
    return _save(path, "outlier", nodes, inits, ("output", [1, 4, 8, 8]))


def _tiny_blocks_class():
    import torch
    from torch import nn

    class TinyBlocks(nn.Module):
        """A residual add, a depthwise convolution and a concatenation: the dependencies
        channel pruning must follow to keep the graph valid."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.bn0 = nn.BatchNorm2d(16)
            self.expand = nn.Conv2d(16, 32, 1, bias=False)
            self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
            self.project = nn.Conv2d(32, 16, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.branch_a = nn.Conv2d(16, 16, 3, padding=1)
            self.branch_b = nn.Conv2d(16, 16, 1)
            self.fc = nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn0(self.stem(x)))
            x = x + self.bn1(self.project(torch.relu(self.dw(torch.relu(self.expand(x))))))
            x = torch.cat([torch.relu(self.branch_a(x)), torch.relu(self.branch_b(x))], dim=1)
            return self.fc(x.mean(dim=(2, 3)))

    return TinyBlocks


def tiny_blocks():
    """TinyBlocks on 1x3x16x16 inputs, seeded, in eval mode."""
    import torch

    torch.manual_seed(0)
    model = _tiny_blocks_class()().eval()
    with torch.no_grad():                       # non-trivial BatchNorm statistics
        for bn in (model.bn0, model.bn1):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return model, (torch.randn(1, 3, 16, 16),)


def save_tiny_detector(path: Path, seed: int = 0) -> Path:
    """A detector-like head on a 1x3x8x8 input: ``boxes`` (1x64x4, ReLU x 40: pixel-scale
    coordinates, 0 to a few hundred) and ``scores`` (1x64x2, Sigmoid: 0-1), two outputs on
    very different scales. The score logits grow with the input's brightness."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(np.abs(rng.standard_normal((8, 3, 3, 3))).astype(np.float32)
                                * 0.3, "w1"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "wb"),
        numpy_helper.from_array(np.full(4, 0.5, np.float32), "bb"),
        numpy_helper.from_array(np.abs(rng.standard_normal((2, 8, 1, 1))).astype(np.float32)
                                * 0.5, "ws"),
        numpy_helper.from_array(np.full(2, -3.0, np.float32), "bs"),
        numpy_helper.from_array(np.array([40.0], np.float32), "scale"),
        numpy_helper.from_array(np.array([1, 4, 64], np.int64), "shape_b"),
        numpy_helper.from_array(np.array([1, 2, 64], np.int64), "shape_s"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["feat"], name="relu1"),
        helper.make_node("Conv", ["feat", "wb", "bb"], ["cb"], name="box_conv"),
        helper.make_node("Relu", ["cb"], ["rb"], name="box_relu"),
        helper.make_node("Mul", ["rb", "scale"], ["mb"], name="box_scale"),
        helper.make_node("Reshape", ["mb", "shape_b"], ["fb"], name="box_reshape"),
        helper.make_node("Transpose", ["fb"], ["boxes"], perm=[0, 2, 1], name="box_t"),
        helper.make_node("Conv", ["feat", "ws", "bs"], ["cs"], name="score_conv"),
        helper.make_node("Sigmoid", ["cs"], ["ss"], name="score_sigmoid"),
        helper.make_node("Reshape", ["ss", "shape_s"], ["fs"], name="score_reshape"),
        helper.make_node("Transpose", ["fs"], ["scores"], perm=[0, 2, 1], name="score_t"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_detector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 64, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 64, 2])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def detector_samples(n: int, seed: int = 0) -> np.ndarray:
    """Inputs for :func:`save_tiny_detector` whose brightness varies 30x from sample to
    sample, so the per-sample maximum score ranges from about 0.1 to near 1."""
    rng = np.random.default_rng(seed)
    base = np.abs(rng.standard_normal((n, 1, 3, 8, 8))).astype(np.float32)
    brightness = np.geomspace(0.1, 3.0, n).astype(np.float32)[rng.permutation(n)]
    return base * brightness[:, None, None, None, None]


def save_inverted_residual_onnx(path: Path, body: int = 27, branch: bool = False) -> Path:
    """A MobileNet-like stem (3->8 conv, Clip, 8-channel depthwise, Relu, 8->4 projection)
    and ``body`` more 4->4 convolutions; with ``branch`` the depthwise output is also read
    by an Add."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def conv(name, x, shape, group=1, pads=0):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(shape) * 0.3).astype(np.float32), f"{name}_w"))
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(shape[0]) * 0.1).astype(np.float32), f"{name}_b"))
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [name], name=name,
                                      group=group, pads=[pads] * 4))
        return name

    inits += [numpy_helper.from_array(np.float32(0.0), "lo"),
              numpy_helper.from_array(np.float32(6.0), "hi")]
    x = conv("stem", "input", (8, 3, 3, 3), pads=1)
    nodes.append(helper.make_node("Clip", [x, "lo", "hi"], ["stem_act"], name="stem_clip"))
    x = conv("dw", "stem_act", (8, 1, 3, 3), group=8, pads=1)
    nodes.append(helper.make_node("Relu", [x], ["dw_act"], name="dw_relu"))
    x = "dw_act"
    if branch:
        nodes.append(helper.make_node("Add", [x, x], ["twice"], name="branch"))
        x = "twice"
    x = conv("project", x, (4, 8, 1, 1))
    for i in range(body):
        x = conv(f"body{i}", x, (4, 4, 1, 1))
        nodes.append(helper.make_node("Relu", [x], [f"body{i}_act"], name=f"body{i}_relu"))
        x = f"body{i}_act"
    nodes.append(helper.make_node("Identity", [x], ["output"], name="out"))
    return _save(path, "inverted_residual", nodes, inits, ("output", [1, 4, 8, 8]))
