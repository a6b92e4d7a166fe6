"""ONNX operators that TensorRT's ONNX parser imports natively, and a check of a graph against them.

From onnx/onnx-tensorrt ``docs/operators.md`` for TensorRT 8.5 (opsets up to 17),
the first release with native NonMaxSuppression and RoiAlign; TensorRT 10 keeps
all of these (opsets 9 to 20). Only the operators with a ``Y`` are listed.
"""

from __future__ import annotations

from typing import NamedTuple

import onnx

SUPPORTED_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
    Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
    Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSwish HardSigmoid Identity If ImageScaler
    InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
    MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
    Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
    ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
    Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()  # noqa: SIM905 (a word list reads better than 160 quoted names)
)

# Supported, but this project's graphs must not use them: Loop is what a traced per-image loop becomes.
FORBIDDEN_OPS = frozenset({"Loop", "If", "Scan", "SplitToSequence", "ConcatFromSequence", "MaxRoiPool"})

# Parser restrictions on inputs that must be constant (input index per operator).
CONSTANT_INPUTS = {"TopK": [1], "InstanceNormalization": [1, 2], "Conv": [1]}

MAX_TOPK = 3840


class GraphIssue(NamedTuple):
    """A node TensorRT's ONNX parser would not take as it is, and why."""

    node: str
    op_type: str
    problem: str

    def __str__(self) -> str:
        return f"{self.op_type} node {self.node!r}: {self.problem}"


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    values = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = attribute.t
    return values


def check_graph(model: onnx.ModelProto) -> list[GraphIssue]:
    """Every reason TensorRT's parser would refuse the graph, or fall back to a plugin; empty when none."""
    issues = []
    constants = _constants(model.graph)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            issues.append(GraphIssue(node.name, node.op_type, f"custom domain {node.domain!r}"))
        elif node.op_type not in SUPPORTED_OPS or node.op_type in FORBIDDEN_OPS:
            issues.append(GraphIssue(node.name, node.op_type, "not natively supported by TensorRT's ONNX parser"))
        for index in CONSTANT_INPUTS.get(node.op_type, []):
            if index < len(node.input) and node.input[index] not in constants:
                issues.append(GraphIssue(node.name, node.op_type, f"input {index} must be a constant"))
        if node.op_type == "TopK" and len(node.input) > 1 and node.input[1] in constants:
            k = int(onnx.numpy_helper.to_array(constants[node.input[1]]).reshape(-1)[0])
            if k >= MAX_TOPK:
                issues.append(GraphIssue(node.name, node.op_type, f"K={k} is not below {MAX_TOPK}"))
    return issues
