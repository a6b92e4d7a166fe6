"""Reduced-precision graphs for TensorRT's strongly typed builds: the fp16 conversion, and the precision a graph carries.

TensorRT 11 takes every tensor's type from the graph (its FP16 and INT8 builder
flags are gone), so an fp16 engine is built from an fp16 graph. ``convert_to_fp16``
makes one from the package's float32 graph, on the CPU:

* the layers with weights (Conv, Gemm, MatMul), and the activations, pooling and
  layout ops between them, run in float16: nearly all of the arithmetic;
* everything that computes coordinates, scores or indices stays float32: the
  input normalisation, group normalisation (a variance overflows float16 on
  large activations), the RPN's decoding, TopK, NonMaxSuppression, RoiAlign, the
  softmax, the box decoding and the score filter. Inputs and outputs keep their types.

Casts join the two regions. A layer whose constants do not fit in float16 stays float32.

Why not a library: onnxconverter-common 1.16.0's ``convert_float_to_float16``,
given every node outside this region as its node block list, left 178
float32 -> float16 -> float32 round trips between the blocked nodes (box
coordinates among them: its clean-up of cast pairs misses a cast with more than
one consumer), rounded the score and IoU thresholds through float16, and made
the ``boxes`` and ``scores`` outputs float16 despite ``keep_io_types``. NVIDIA
ModelOpt's AutoCast pins onnx~=1.21 and onnxruntime-gpu~=1.24 (this project
pins 1.23.2 and 1.31.1) and needs torch and CuPy.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model_export.command_errors import PrecisionError
from service.engines.engine_manifest import Precision

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = 65504.0
# Layers with weights: float16 whenever their constants fit.
HALF_ANCHORS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops that stay float16 when every variable float input already is, and that lead to another float16 op.
HALF_CARRIERS = frozenset(
    {"Relu", "LeakyRelu", "Add", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Reshape", "Flatten", "Transpose"}
    | {"Squeeze", "Unsqueeze", "Identity"}
)
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


@dataclass(frozen=True)
class GraphFacts:
    """What the selection needs to know of a graph that carries inferred types."""

    types: dict[str, int]  # element type of every tensor
    constants: dict[str, np.ndarray]  # initializers and Constant nodes' values
    outputs: frozenset[str]

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> GraphFacts:
        types = {info.name: info.type.tensor_type.elem_type for info in [*graph.value_info, *graph.input, *graph.output]}
        constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        for node in graph.node:
            value = next((attr.t for attr in node.attribute if attr.name == "value"), None)
            if node.op_type == "Constant" and value is not None:
                constants[node.output[0]] = numpy_helper.to_array(value)
        types |= {init.name: init.data_type for init in graph.initializer}
        return cls(types, constants, frozenset(output.name for output in graph.output))

    def is_float(self, name: str) -> bool:
        return bool(name) and self.types.get(name) == FLOAT


def fits_half(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return bool(finite.size == 0 or np.abs(finite).max() <= FP16_MAX)


def _runs_in_half(node: onnx.NodeProto, facts: GraphFacts, half_tensors: set[str]) -> bool:
    if any(name in facts.outputs for name in node.output):
        return False  # the graph's outputs keep their types
    floats = [name for name in node.input if facts.is_float(name)]
    if not all(fits_half(facts.constants[name]) for name in floats if name in facts.constants):
        return False
    variable = [name for name in floats if name not in facts.constants]
    if node.op_type in HALF_ANCHORS:
        return bool(variable)
    return node.op_type in HALF_CARRIERS and bool(variable) and all(name in half_tensors for name in variable)


def half_precision_nodes(graph: onnx.GraphProto, facts: GraphFacts) -> set[int]:
    """Indices of the nodes to run in float16 (the graph's nodes in topological order, types inferred)."""
    chosen: set[int] = set()
    half_tensors: set[str] = set()
    for index, node in enumerate(graph.node):
        if _runs_in_half(node, facts, half_tensors):
            chosen.add(index)
            half_tensors.update(node.output)
    # A carrier whose result only float32 ops read would just move a cast: it stays float32.
    consumers: dict[str, list[int]] = defaultdict(list)
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers[name].append(index)
    for index in sorted(chosen, reverse=True):
        node = graph.node[index]
        if node.op_type in HALF_CARRIERS and not any(user in chosen for name in node.output for user in consumers[name]):
            chosen.discard(index)
    return chosen


class _Rewriter:
    """Rebuilds the node list with the chosen nodes in float16 and a Cast on every edge between the regions."""

    def __init__(self, graph: onnx.GraphProto, facts: GraphFacts, half: set[int]) -> None:
        self.graph, self.facts, self.half = graph, facts, half
        self.half_outputs = {name for index in half for name in graph.node[index].output if facts.is_float(name)}
        self.initializers = {init.name for init in graph.initializer}
        self.nodes: list[onnx.NodeProto] = []
        self.casts: dict[tuple[str, int], str] = {}
        self.half_initializers: dict[str, str] = {}

    def rewrite(self) -> None:
        for index, node in enumerate(self.graph.node):
            for position, name in enumerate(node.input):
                node.input[position] = self._as_half(name) if index in self.half else self._as_float(name)
            self.nodes.append(node)
        for info in self.graph.value_info:
            if info.name in self.half_outputs:
                info.type.tensor_type.elem_type = FLOAT16
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        used = {name for node in self.nodes for name in node.input} | {graph_input.name for graph_input in self.graph.input}
        kept = [init for init in self.graph.initializer if init.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)

    def _as_half(self, name: str) -> str:
        if not self.facts.is_float(name) or name in self.half_outputs:
            return name
        if name in self.initializers:
            return self._half_initializer(name)
        return self._cast(name, FLOAT16)

    def _as_float(self, name: str) -> str:
        return self._cast(name, FLOAT) if name in self.half_outputs else name

    def _cast(self, name: str, to: int) -> str:
        if (name, to) not in self.casts:
            output = f"{name}/as_{'fp16' if to == FLOAT16 else 'fp32'}"
            self.nodes.append(helper.make_node("Cast", [name], [output], to=to, name=output))
            self.casts[name, to] = output
        return self.casts[name, to]

    def _half_initializer(self, name: str) -> str:
        if name not in self.half_initializers:
            values = self.facts.constants[name].astype(np.float16)
            self.graph.initializer.append(numpy_helper.from_array(values, f"{name}/fp16"))
            self.half_initializers[name] = f"{name}/fp16"
        return self.half_initializers[name]


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the float32 graph with its layers with weights in float16 (see the module's docstring); checked by onnx."""
    if graph_precision(model) != "fp32":
        raise PrecisionError(f"the graph is already {graph_precision(model)}; convert the float32 graph")
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for node in model.graph.node for attr in node.attribute):
        raise PrecisionError("graphs with control flow (If, Loop, Scan) are not converted: their bodies would need the same treatment")
    typed = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    facts = GraphFacts.of(typed.graph)
    half = half_precision_nodes(typed.graph, facts)
    if not half:
        raise PrecisionError("no layer of the graph can run in float16 (no Conv, Gemm or MatMul whose weights fit)")
    _Rewriter(typed.graph, facts, half).rewrite()
    converted = onnx.shape_inference.infer_shapes(typed, strict_mode=True)
    onnx.checker.check_model(converted, full_check=True)
    return converted


def write_fp16_graph(source: Path, target: Path) -> Path:
    """``convert_to_fp16`` from file to file; returns ``target``."""
    onnx.save(convert_to_fp16(onnx.load(str(source))), str(target))
    return target


def graph_precision(model: onnx.ModelProto) -> Precision:
    """int8 for a graph with Q/DQ nodes (explicit quantization), fp16 for one with float16 tensors, else fp32."""
    graph = model.graph
    if any(node.op_type in QDQ_OPS for node in graph.node):
        return "int8"
    half_tensors = any(t.type.tensor_type.elem_type == FLOAT16 for t in [*graph.value_info, *graph.input, *graph.output])
    half_weights = any(init.data_type == FLOAT16 for init in graph.initializer)
    half_casts = any(node.op_type == "Cast" and helper.get_node_attr_value(node, "to") == FLOAT16 for node in graph.node)
    return "fp16" if half_tensors or half_weights or half_casts else "fp32"
