"""Per-node costs of an ONNX graph: op class, precision, operations and bytes moved.

Counts follow what a CPU runtime executes after its usual fusions, approximately:
- Conv/ConvTranspose: 2 x MACs (groups included; ``depthwise`` when every group has one
  input channel); MatMul/Gemm: 2 x M x N x K per batch; everything else ~1 op per element
  (the larger of the inputs and the output).
- Bytes: non-constant inputs + weights + outputs at their dtype sizes. In a QDQ graph a
  tensor read through DequantizeLinear, or written only to QuantizeLinear, counts at int8.
- Folded (no cost, not counted as executed): shape-only ops, nodes computed from constants
  only, DequantizeLinear of weights and Q/DQ pairs that the runtime fuses into integer
  kernels, and BatchNorm/activations/bias adds that follow a Conv/MatMul/Gemm alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgeopt.runtimes.errors import RuntimeAdapterError

OP_CLASSES = ("conv", "depthwise", "matmul", "elementwise", "other")
PRECISION_INDEX = {"fp32": 0, "fp16": 1, "int8": 2}

_CONV = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3), "ConvTranspose": (0, 1)}
_MATMUL = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3),
           "Gemm": (0, 1), "QGemm": (0, 3), "MatMulIntegerToFloat": (0, 1),
           "DynamicQuantizeMatMul": (0, 1)}
_INTEGER_OPS = {"ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul", "QGemm",
                "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul",
                "QLinearSigmoid", "QLinearConcat", "QLinearGlobalAveragePool",
                "QLinearLeakyRelu", "QLinearSoftmax", "QLinearAveragePool"}
_FREE = {"Constant", "Shape", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity",
         "Dropout", "Size", "ConstantOfShape", "Range"}
_DATA_MOVEMENT = {"Transpose", "Concat", "Slice", "Gather", "GatherElements", "Split", "Pad",
                  "Expand", "Tile", "Resize", "DepthToSpace", "SpaceToDepth", "QLinearConcat",
                  "ScatterND", "GatherND", "Cast"}
# Ops a CPU runtime fuses into the Conv/MatMul/Gemm that feeds them (when it is the only
# reader of that output): bias adds, BatchNorm (folded into weights), activations.
_EPILOGUE = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
             "BatchNormalization", "Add"}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
# Ops per element of the costlier elementwise ops (a polynomial per transcendental, or a
# reduction plus a pass for the normalizations); the rest count 1.
_OPS_PER_ELEMENT = {"Erf": 8, "Exp": 8, "Tanh": 8, "Sigmoid": 8, "Gelu": 10, "Softmax": 12,
                    "LayerNormalization": 8, "Pow": 8, "Sqrt": 4, "Div": 2, "Log": 8}
# Ops ONNX Runtime's QDQ transformer turns into integer kernels (or runs on int8 data).
_QDQ_FUSABLE = {"Conv", "MatMul", "Gemm", "Add", "Mul", "Concat", "MaxPool", "AveragePool",
                "GlobalAveragePool", "Sigmoid", "LeakyRelu", "Relu", "Clip", "Softmax",
                "Resize", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Gather", "Flatten",
                "Split", "Where", "ArgMax", "Pad", "Slice"}
_DTYPE_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8,
                16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1}


class EstimateUnavailable(RuntimeAdapterError):
    """Estimates cannot be made for this model here (no onnx package, not an ONNX file)."""


@dataclass(frozen=True)
class NodeCost:
    name: str
    op_type: str
    op_class: str
    precision: str
    ops: float
    bytes: float
    folded: bool = False


@dataclass(frozen=True)
class ModelCosts:
    """The executed nodes as arrays, ready for the roofline."""

    nodes: tuple[NodeCost, ...]
    ops: np.ndarray
    bytes: np.ndarray
    op_class: np.ndarray
    precision: np.ndarray
    weight_bytes: float = 0.0       # initializers as stored: what stays resident between runs

    @property
    def executed(self) -> int:
        return int(self.ops.size)

    @classmethod
    def from_nodes(cls, nodes: list[NodeCost], weight_bytes: float = 0.0) -> ModelCosts:
        run = [n for n in nodes if not n.folded]
        return cls(tuple(nodes), np.array([n.ops for n in run], dtype=float),
                   np.array([n.bytes for n in run], dtype=float),
                   np.array([OP_CLASSES.index(n.op_class) for n in run], dtype=int),
                   np.array([PRECISION_INDEX[n.precision] for n in run], dtype=int),
                   float(weight_bytes))

    def summary(self) -> dict:
        """Op counts (GOPs) per class and precision, bytes moved (MB), node counts."""
        gops: dict[str, dict[str, float]] = {}
        for n in self.nodes:
            if not n.folded and n.ops:
                by_prec = gops.setdefault(n.op_class, {})
                by_prec[n.precision] = by_prec.get(n.precision, 0.0) + n.ops / 1e9
        return {"gops_by_class": {c: {p: float(f"{v:.4g}") for p, v in d.items()}
                                  for c, d in gops.items()},
                "mbytes_moved": round(float(self.bytes.sum()) / 1e6, 3),
                "mbytes_weights": round(self.weight_bytes / 1e6, 3),
                "nodes_executed": self.executed, "nodes_in_graph": len(self.nodes)}


def _onnx():
    try:
        import onnx
    except ImportError as e:
        msg = "latency estimates read the ONNX graph: pip install onnx"
        raise EstimateUnavailable(msg) from e
    return onnx


def model_costs(path: Path) -> ModelCosts:
    """Costs of every node of the ONNX model at ``path`` (cached by path, size and mtime)."""
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        msg = (f"estimates read ONNX graphs, not {path.name}; pass the ONNX model "
               "(for OpenVINO IR, the ONNX it was converted from)")
        raise EstimateUnavailable(msg)
    try:
        st = os.stat(path)
    except OSError as e:
        msg = f"cannot read {path}: {e.strerror or e}"
        raise EstimateUnavailable(msg) from e
    return _cached_costs(str(path.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _cached_costs(path: str, size: int, mtime: int) -> ModelCosts:
    onnx = _onnx()
    model = onnx.load(path, load_external_data=False)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # a graph shape inference cannot follow: count what is known
        pass
    weights = sum(int(np.prod(t.dims)) * _DTYPE_BYTES.get(t.data_type, 4)
                  for t in model.graph.initializer)
    return ModelCosts.from_nodes(graph_costs(model), weights)


def _tensor_info(graph) -> tuple[dict[str, tuple[tuple[int, ...], int]], set[str]]:
    info: dict[str, tuple[tuple[int, ...], int]] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                         for d in t.shape.dim)
            info[vi.name] = (dims, t.elem_type)
    constants = set()
    for init in graph.initializer:
        info[init.name] = (tuple(init.dims), init.data_type)
        constants.add(init.name)
    return info, constants


@dataclass
class _Graph:
    info: dict
    constants: set
    producer: dict
    readers: dict
    outputs: set
    fused: set          # outputs of a Conv/MatMul/Gemm, or of an epilogue fused into one

    def numel(self, name: str) -> int:
        return int(np.prod(self.info[name][0])) if name in self.info else 0

    def from_dq(self, name: str) -> bool:
        p = self.producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    def nbytes(self, name: str, as_int8: bool = False) -> float:
        if name not in self.info:
            return 0.0
        return float(self.numel(name) * (1 if as_int8 else _DTYPE_BYTES.get(self.info[name][1], 4)))


def graph_costs(model) -> list[NodeCost]:
    """Costs of each node of a loaded (shape-inferred) ``onnx.ModelProto``, in graph order."""
    graph = model.graph
    info, constants = _tensor_info(graph)
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    g = _Graph(info, constants, {o: n for n in graph.node for o in n.output}, readers,
               {o.name for o in graph.output}, set())
    costs = []
    for node in graph.node:
        # Constant-foldable: everything it reads is a constant (Shape results included).
        if node.op_type != "DequantizeLinear" and node.input and all(
                i in constants or i == "" for i in node.input):
            constants.update(node.output)
        if node.op_type in {"Shape", "Constant", "Size", "ConstantOfShape"}:
            constants.update(node.output)
        cost = _node_cost(node, g)
        if node.op_type in _CONV or node.op_type in _MATMUL or (
                cost.folded and node.op_type in _EPILOGUE):
            g.fused.update(o for o in node.output if o)
        costs.append(cost)
    return costs


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == a.INT else list(a.ints) if a.ints else default
    return default


def _node_cost(node, g: _Graph) -> NodeCost:
    op, name = node.op_type, node.name or node.output[0]
    out = node.output[0] if node.output else ""
    folded = NodeCost(name, op, "other", "fp32", 0.0, 0.0, folded=True)
    if op in _FREE or (out in g.constants and op not in _QDQ):
        return folded
    if op == "DequantizeLinear":
        if node.input[0] in g.constants:
            return folded                      # weights: read at int8 by their consumer
        if all(r.op_type in _QDQ_FUSABLE for r in g.readers.get(out, [])):
            return folded                      # fused into the integer kernel reading it
    if op == "QuantizeLinear":
        p = g.producer.get(node.input[0])
        if p is not None and (p.op_type in _QDQ_FUSABLE or p.op_type in _EPILOGUE) and (
                any(g.from_dq(i) for i in p.input) or node.input[0] in g.fused):
            return folded                      # the integer kernel writes int8 itself
    if op in _EPILOGUE and _is_epilogue(node, g):
        return folded
    quant_in = [g.from_dq(i) for i in node.input]
    quant_out = bool(out) and out not in g.outputs and bool(g.readers.get(out)) and all(
        r.op_type == "QuantizeLinear" for r in g.readers[out])
    int_out = op in _INTEGER_OPS and op not in {"MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
    if op in _INTEGER_OPS or (op in _CONV or op in _MATMUL) and all(quant_in[:2]):
        precision = "int8"
    elif g.info.get(out, ((), 1))[1] == 10:
        precision = "fp16"
    else:
        precision = "fp32"
    # A lookup (Gather from a table) reads the rows it gathers, not the table.
    read = [i for i in node.input if i] if op != "Gather" else node.input[1:]
    moved = sum(g.nbytes(i, as_int8=q) for i, q in zip(node.input, quant_in, strict=False)
                if i in read)
    moved += sum(g.nbytes(o, as_int8=quant_out or int_out) for o in node.output if o)
    if op in _CONV:
        a, w = _CONV[op]
        wshape = g.info.get(node.input[w], ((),))[0] if len(node.input) > w else ()
        group = _attr(node, "group", 1)
        if len(wshape) >= 3:
            per_out = wshape[1] * int(np.prod(wshape[2:]))
            macs = (g.numel(node.input[a]) if op == "ConvTranspose" else g.numel(out)) * per_out
        else:
            macs = g.numel(out)
        depthwise = group > 1 and len(wshape) >= 2 and wshape[1] == 1 and op != "ConvTranspose"
        return NodeCost(name, op, "depthwise" if depthwise else "conv", precision,
                        2.0 * macs, moved)
    if op in _MATMUL:
        a, _ = _MATMUL[op]
        ashape = g.info.get(node.input[a], ((),))[0]
        k = 1
        if ashape:
            trans_a = op in {"Gemm", "QGemm"} and _attr(node, "transA", 0)
            k = ashape[0] if trans_a and len(ashape) == 2 else ashape[-1]
        return NodeCost(name, op, "matmul", precision, 2.0 * g.numel(out) * k, moved)
    elements = max([g.numel(i) for i in node.input if i and i not in g.constants]
                   + [g.numel(out)])
    op_class = "other" if op in _DATA_MOVEMENT else "elementwise"
    return NodeCost(name, op, op_class, precision,
                    float(elements * _OPS_PER_ELEMENT.get(op, 1)), moved)


def _is_epilogue(node, g: _Graph) -> bool:
    """A bias add / BatchNorm / activation right after a Conv/MatMul/Gemm (or an epilogue
    already fused into one) that only it reads. Conv + residual Add is fused too (ONNX
    Runtime's FusedConv with Z), so an Add may have a second, non-constant input."""
    data = [i for i in node.input if i and i not in g.constants]
    if len(data) != 1 and not (node.op_type == "Add" and len(data) == 2):
        return False
    return any(i in g.fused and len(g.readers.get(i, [])) == 1 for i in data)
