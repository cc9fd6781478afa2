"""Tensors whose range a calibrator must not clip: what the model outputs, and what bounded
functions produce.

A clipping calibrator trades the rare extremes of a hidden activation for resolution,
which the layers after it average away. At a graph output nothing comes after: a score
head clipped at 0.3 drops every detection above that threshold. So a graph output, and
every tensor that reaches one through element-wise or reshaping ops only, keeps at least
its full observed range; and a Sigmoid, Softmax or Tanh output takes its mathematical
range, which no unseen input can exceed.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["BOUNDED", "PASS_THROUGH", "bounded_tensors", "output_tensors", "protected_ranges",
           "state_tensors"]

# Ops whose output is an element-wise function (or a rearrangement) of their inputs: a
# clip of their output is a clip of what reaches the model's output.
PASS_THROUGH = frozenset({
    "Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split",
    "Slice", "Expand", "Tile", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "LeakyRelu",
    "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softmax", "LogSoftmax",
    "Exp", "Log", "Sqrt", "Pow", "Max", "Min", "Cast", "QuantizeLinear", "DequantizeLinear",
})
BOUNDED: Mapping[str, tuple[float, float]] = {
    "Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Softmax": (0.0, 1.0),
    "Tanh": (-1.0, 1.0),
}


# Recurrent ops' initial-state inputs (initial_h, initial_c): a state is the previous
# call's output, and a clip there compounds over every step of the sequence.
RECURRENT_STATE: Mapping[str, tuple[int, ...]] = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}


def state_tensors(model) -> set[str]:
    """Recurrent initial states, and the tensors that reach one through pass-through ops."""
    starts = [node.input[i] for node in model.graph.node
              for i in RECURRENT_STATE.get(node.op_type, ()) if i < len(node.input)]
    return _through_pass_through(model, starts)


def output_tensors(model) -> set[str]:
    """Graph outputs, and the tensors that reach one through pass-through ops only."""
    return _through_pass_through(model, [o.name for o in model.graph.output])


def _through_pass_through(model, todo: list[str]) -> set[str]:
    producer = {out: node for node in model.graph.node for out in node.output}
    initializers = {t.name for t in model.graph.initializer}
    found: set[str] = set()
    while todo:
        name = todo.pop()
        if name in found or name in initializers or not name:
            continue
        found.add(name)
        node = producer.get(name)
        if node is not None and node.op_type in PASS_THROUGH:
            todo += list(node.input)
    return found


def bounded_tensors(model) -> dict[str, tuple[float, float]]:
    """The outputs of bounded functions, with their mathematical range."""
    return {node.output[0]: BOUNDED[node.op_type] for node in model.graph.node
            if node.op_type in BOUNDED and node.output}


def protected_ranges(model) -> dict[str, tuple[float, float] | None]:
    """Tensor -> its mathematical range (bounded functions), or None: its full observed
    range (what reaches a graph output or a recurrent state)."""
    ranges: dict[str, tuple[float, float] | None] = dict.fromkeys(output_tensors(model)
                                                                  | state_tensors(model))
    ranges.update(bounded_tensors(model))
    return ranges
