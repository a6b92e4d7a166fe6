"""The int8 Q/DQ graph's surgery and checks: what ``model_export.quantize`` does after ONNX Runtime's quantizer.

ONNX Runtime's quantizer rewires every reader of a quantized tensor to its DequantizeLinear output, float
ops included, when one quantized layer reads it: RoiAlign then pools int8-rounded features, the RPN decodes
rounded box deltas. ``float_readers_read_float`` gives those readers the float tensor back. ``qdq_problems``
checks the result against what the module promises.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from model_export.command_errors import PrecisionError

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def first_conv(model: onnx.ModelProto) -> onnx.NodeProto:
    """The first Conv in the graph's (topological) order: the one that reads the normalised image."""
    for node in model.graph.node:
        if node.op_type == "Conv":
            return node
    raise PrecisionError("the graph has no Conv: there is nothing to quantize")


def _activation_qdq(graph: onnx.GraphProto) -> dict[str, str]:
    """DequantizeLinear output -> the float tensor its QuantizeLinear read, for every activation (not weight) Q/DQ pair."""
    producer = {output: node for node in graph.node for output in node.output}
    pairs = {}
    for node in graph.node:
        quantize = producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if quantize is not None and quantize.op_type == "QuantizeLinear":
            pairs[node.output[0]] = quantize.input[0]
    return pairs


def float_readers_read_float(graph: onnx.GraphProto) -> None:
    """Every node but the quantized layers reads the float tensor instead of its Q/DQ copy; then the Q/DQ nodes and
    constants that nothing reads any more are dropped."""
    pairs = _activation_qdq(graph)
    for node in graph.node:
        if node.op_type not in QUANTIZED_OPS and node.op_type not in QDQ_OPS:
            for position, name in enumerate(node.input):
                node.input[position] = pairs.get(name, name)
    while True:
        read = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
        unread = [node for node in graph.node if node.op_type in QDQ_OPS and not any(name in read for name in node.output)]
        if not unread:
            break
        for node in unread:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def qdq_problems(model: onnx.ModelProto) -> list[str]:
    """What makes ``model`` other than the int8 graph this module promises (an empty list when it is one)."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    pairs = _activation_qdq(graph)
    problems = [f"{node.name}: {node.op_type} is a QOperator op" for node in graph.node if node.op_type.startswith("QLinear")]
    for node in graph.node:
        if node.op_type in QDQ_OPS:
            zero_point = initializers.get(node.input[2]) if len(node.input) > 2 else None
            if zero_point is None or zero_point.data_type != TensorProto.INT8 or onnx.numpy_helper.to_array(zero_point).any():
                problems.append(f"{node.name}: not symmetric int8 (a zero point of 0 in int8 is what TensorRT takes)")
    first = first_conv(model)
    if any(name in producer and producer[name].op_type == "DequantizeLinear" for name in first.input):
        problems.append(f"{first.name}: the first Conv reads int8")
    for node in graph.node:
        reads = [producer.get(name) for name in node.input[:2] if name]
        dequantized = all(source is not None and source.op_type == "DequantizeLinear" for source in reads)
        if node.op_type in QUANTIZED_OPS and node is not first and not dequantized and _has_weights(node, initializers, producer):
            problems.append(f"{node.name}: {node.op_type} was left in float")
        if node.op_type not in QUANTIZED_OPS and node.op_type not in QDQ_OPS and any(name in pairs for name in node.input):
            problems.append(f"{node.name}: {node.op_type} reads a dequantized tensor instead of the float one")
    return problems


def _has_weights(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], producer: dict[str, onnx.NodeProto]) -> bool:
    """Whether the layer's second input is a constant (a weight, perhaps through its DequantizeLinear)."""
    name = node.input[1]
    source = producer.get(name)
    return name in initializers or (source is not None and source.op_type == "DequantizeLinear" and source.input[0] in initializers)
