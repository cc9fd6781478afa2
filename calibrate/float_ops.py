"""Ops that INT8 leaves float, one line each for the report: recurrent cells (LSTM, GRU,
RNN) where the runtime has no integer kernel for them, and control flow (If, Loop, Scan),
whose subgraphs stay float.

ONNX Runtime's static (QDQ) quantizer has no LSTM, GRU or RNN kernel (its LSTM kernel is
the dynamic ``DynamicQuantizeLSTM``) and does not enter subgraphs. NNCF quantizes
OpenVINO's LSTMSequence and GRUSequence, except a GRU with ``linear_before_reset`` (the
form PyTorch exports), and would quantize If bodies too: edgeopt keeps control-flow bodies
float on both runtimes.
"""

from __future__ import annotations

__all__ = ["CONTROL_FLOW", "OV_RECURRENT", "RECURRENT", "ov_control_flow", "ov_recurrent_notes", "qdq_notes"]

RECURRENT = ("LSTM", "GRU", "RNN")
CONTROL_FLOW = ("If", "Loop", "Scan")
OV_RECURRENT = ("LSTMSequence", "GRUSequence", "RNNSequence", "LSTMCell", "GRUCell",
                 "RNNCell")
_OV_CONTROL_FLOW = ("If", "Loop", "TensorIterator")


def qdq_notes(model) -> list[str]:
    """One line per recurrent or control-flow node of an ONNX model quantized to QDQ."""
    notes = []
    for node in model.graph.node:
        name = node.name or node.output[0]
        if node.op_type in RECURRENT:
            notes.append(f"{node.op_type} '{name}' stays float: ONNX Runtime's static INT8 "
                         f"(QDQ) has no {node.op_type} kernel")
        elif node.op_type in CONTROL_FLOW:
            notes.append(f"{node.op_type} '{name}': its subgraphs stay float (the QDQ "
                         "quantizer does not enter them)")
    return notes


def ov_control_flow(model) -> list[str]:
    """One note per If/Loop/TensorIterator op of an ``openvino.Model``."""
    return [f"{op.get_type_name()} '{op.get_friendly_name()}': its subgraphs stay float"
            for op in model.get_ops() if op.get_type_name() in _OV_CONTROL_FLOW]


def ov_recurrent_notes(quantized) -> list[str]:
    """One line per recurrent op of an NNCF-quantized ``openvino.Model``: quantized when a
    FakeQuantize feeds it, else float."""
    notes = []
    for op in quantized.get_ops():
        kind = op.get_type_name()
        if kind not in OV_RECURRENT:
            continue
        fed = [i for i, value in enumerate(op.input_values())
               if value.get_node().get_type_name() == "FakeQuantize"]
        name = op.get_friendly_name()
        if fed:
            notes.append(f"{kind} '{name}' quantized: INT8 on {len(fed)} of its inputs "
                         "(data, state and weights) by NNCF")
        else:
            notes.append(f"{kind} '{name}' stays float: NNCF does not quantize it (a GRU "
                         "with linear_before_reset, as PyTorch exports it, has no INT8 form)"
                         if kind.startswith("GRU") else
                         f"{kind} '{name}' stays float: NNCF placed no quantizer on it")
    return notes
