"""What the TensorRT build does on the CPU: the fp16 graph made from the default package (checked in ONNX Runtime
against the float32 graph), the precision a graph carries, the build's options, and the TensorRT 11 API it is written for."""

from __future__ import annotations

import ast
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from model_export.__main__ import main
from model_export.config import parse_profile
from model_export.detections import Detections
from model_export.engine import EngineBuildError, EngineConfig, check_graph_io, source_graph
from model_export.parity import ParityReport, compare_detections
from model_export.precision import FP16_MAX, PrecisionError, convert_to_fp16, graph_precision
from model_export.synth import generate_image
from service.letterbox import letterbox
from service.manifest import read_manifest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PACKAGE = REPO / "models" / "default" / "package"
SCORE_THRESHOLD = 0.3
IR_VERSION = 10  # what the exporter writes at opset 18; onnx's newest is more than onnxruntime reads
# Ops whose float inputs must stay float32: what decides boxes, scores and which detections survive.
FLOAT32_OPS = {"TopK", "NonMaxSuppression", "RoiAlign", "Softmax", "Exp", "Div", "Sub", "Sigmoid", "InstanceNormalization"}


@pytest.fixture(scope="module")
def fp32_graph() -> onnx.ModelProto:
    return onnx.load(str(DEFAULT_PACKAGE / "model.onnx"))


@pytest.fixture(scope="module")
def fp16_graph(fp32_graph: onnx.ModelProto) -> onnx.ModelProto:
    return convert_to_fp16(fp32_graph)


def _detect(model: onnx.ModelProto, canvases: np.ndarray) -> list[Detections]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    results: list[Detections] = []
    for start in range(0, len(canvases), 8):
        feed = {
            "images": canvases[start : start + 8],
            "score_threshold": np.array(SCORE_THRESHOLD, np.float32),
            "iou_threshold": np.array(0.5, np.float32),
        }
        counts, boxes, scores, labels = session.run(None, feed)
        results += [Detections(boxes[i, :n], scores[i, :n], labels[i, :n]) for i, n in enumerate(counts)]
    return results


def test_fp16_graph_detects_what_the_fp32_graph_detects(fp32_graph: onnx.ModelProto, fp16_graph: onnx.ModelProto) -> None:
    canvas = read_manifest(DEFAULT_PACKAGE).canvas
    canvases = np.stack([letterbox(generate_image(seed=4242, index=i, empty_fraction=0.0)[0], canvas)[0] for i in range(16)])
    reference, half = _detect(fp32_graph, canvases), _detect(fp16_graph, canvases)
    counts = np.array([[len(r.scores), len(h.scores)] for r, h in zip(reference, half, strict=True)])
    assert counts[:, 0].sum() > 0, "the fp32 graph found nothing: the comparison would prove nothing"
    assert np.abs(counts[:, 0] - counts[:, 1]).max() <= 1 and abs(counts[:, 0].sum() - counts[:, 1].sum()) <= 0.02 * counts[:, 0].sum()
    report = ParityReport()
    for expected, got in zip(reference, half, strict=True):
        report.add(compare_detections(expected, got, SCORE_THRESHOLD, 100, min_iou=0.95, score_tolerance=0.02))
    assert report.compared > 0
    assert report.matched_fraction >= 0.97 and report.max_box_delta <= 2.0, report.to_json()


def _types(model: onnx.ModelProto) -> dict[str, int]:
    graph = onnx.shape_inference.infer_shapes(model).graph
    return {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]} | {
        init.name: init.data_type for init in graph.initializer
    }


def test_fp16_graph_keeps_its_contract_and_its_detection_ops_in_float32(fp32_graph: onnx.ModelProto, fp16_graph: onnx.ModelProto) -> None:
    assert [(v.name, v.type.tensor_type.elem_type) for v in [*fp16_graph.graph.input, *fp16_graph.graph.output]] == [
        (v.name, v.type.tensor_type.elem_type) for v in [*fp32_graph.graph.input, *fp32_graph.graph.output]
    ]
    types = _types(fp16_graph)
    for node in fp16_graph.graph.node:
        if node.op_type in FLOAT32_OPS:
            assert TensorProto.FLOAT16 not in [types.get(name) for name in node.input], f"{node.op_type} {node.name} reads float16"
    half_weights = [
        node for node in fp16_graph.graph.node if node.op_type in ("Conv", "Gemm") and types[node.input[1]] == TensorProto.FLOAT16
    ]
    assert len(half_weights) == sum(node.op_type in ("Conv", "Gemm") for node in fp32_graph.graph.node)


def test_fp16_graph_rounds_no_float32_value_through_float16(fp16_graph: onnx.ModelProto) -> None:
    producers = {name: node for node in fp16_graph.graph.node for name in node.output}
    for node in fp16_graph.graph.node:
        source = producers.get(node.input[0]) if node.input else None
        if node.op_type == "Cast" and helper.get_node_attr_value(node, "to") == TensorProto.FLOAT and source is not None:
            assert not (source.op_type == "Cast" and helper.get_node_attr_value(source, "to") == TensorProto.FLOAT16), node.name


def test_graph_precision_reads_fp32_fp16_and_qdq_graphs(fp32_graph: onnx.ModelProto, fp16_graph: onnx.ModelProto) -> None:
    assert graph_precision(fp32_graph) == "fp32"
    assert graph_precision(fp16_graph) == "fp16"
    assert graph_precision(_qdq_graph()) == "int8"


def test_an_fp16_graph_is_not_converted_again(fp16_graph: onnx.ModelProto) -> None:
    with pytest.raises(PrecisionError, match="already fp16"):
        convert_to_fp16(fp16_graph)


def _qdq_graph() -> onnx.ModelProto:
    scale, zero = numpy_helper.from_array(np.array(0.1, np.float32), "scale"), numpy_helper.from_array(np.array(0, np.int8), "zero")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [scale, zero],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION)


def _two_convs(first_weight: float, second_weight: float = 0.5, conv_makes_output: bool = False) -> onnx.ModelProto:
    """x -> Conv(w1) -> Relu -> Conv(w2) -> Identity -> y (or Conv(w2) -> y), 1x1 kernels on one channel."""
    weights = [
        numpy_helper.from_array(np.full((1, 1, 1, 1), value, np.float32), name)
        for name, value in (("w1", first_weight), ("w2", second_weight))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Conv", ["b", "w2"], ["y" if conv_makes_output else "c"], name="conv2"),
    ]
    if not conv_makes_output:
        nodes.append(helper.make_node("Identity", ["c"], ["y"], name="out"))
    graph = helper.make_graph(
        nodes,
        "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_a_layer_whose_weights_overflow_float16_stays_float32() -> None:
    converted = convert_to_fp16(_two_convs(first_weight=2 * FP16_MAX))
    types = _types(converted)
    convs = {node.name: node for node in converted.graph.node if node.op_type == "Conv"}
    assert types[convs["conv1"].input[1]] == TensorProto.FLOAT and types[convs["conv2"].input[1]] == TensorProto.FLOAT16
    x = np.array([[[[1e-4, 2e-4], [0.0, -1.0]]]], np.float32)
    np.testing.assert_allclose(_run(converted, x), _run(_two_convs(2 * FP16_MAX), x), rtol=1e-3)


def test_a_layer_that_makes_a_graph_output_stays_float32() -> None:
    model = _two_convs(first_weight=0.25, conv_makes_output=True)
    converted = convert_to_fp16(model)
    types = _types(converted)
    convs = {node.name: node for node in converted.graph.node if node.op_type == "Conv"}
    assert types[convs["conv1"].input[1]] == TensorProto.FLOAT16 and types[convs["conv2"].input[1]] == TensorProto.FLOAT
    assert converted.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    x = np.array([[[[1.0, 2.0], [0.0, -1.0]]]], np.float32)
    np.testing.assert_allclose(_run(converted, x), _run(model, x), rtol=1e-3)


def test_a_graph_without_layers_that_fit_float16_is_refused() -> None:
    with pytest.raises(PrecisionError, match="no layer of the graph can run in float16"):
        convert_to_fp16(_two_convs(first_weight=2 * FP16_MAX, second_weight=2 * FP16_MAX))


# The build's options, and what it does before TensorRT


def test_engine_config_checks_the_profile_and_the_precision_source(tmp_path: Path) -> None:
    with pytest.raises(EngineBuildError, match="1 <= min <= opt <= max, got 8:4:16"):
        EngineConfig(8, 4, 16)
    graph = tmp_path / "model.int8.onnx"
    with pytest.raises(
        EngineBuildError, match=r"--fp16 and --graph .* each choose the graph the engine is built from.*ask for one of them"
    ):
        EngineConfig(fp16=True, graph=graph)
    with pytest.raises(EngineBuildError, match="--fp16 and --int8 each choose"):
        EngineConfig(fp16=True, int8=True)
    with pytest.raises(EngineBuildError, match=f"--int8 and --graph {graph} each choose"):
        EngineConfig(int8=True, graph=graph)
    with pytest.raises(EngineBuildError, match="--batch should be MIN:OPT:MAX, like 1:8:16, got '1:8'"):
        parse_profile("1:8")


def test_fp16_build_parses_an_fp16_graph_written_into_the_package(tmp_path: Path) -> None:
    package = tmp_path / "package"
    shutil.copytree(DEFAULT_PACKAGE, package)
    manifest = read_manifest(package)
    graph_path = source_graph(package, manifest, EngineConfig(fp16=True))
    assert graph_path == package / "model.fp16.onnx"
    graph = onnx.load(str(graph_path))
    assert graph_precision(graph) == "fp16"
    check_graph_io(graph, manifest, graph_path)
    assert source_graph(package, manifest, EngineConfig()) == package / "model.onnx"


def test_int8_build_parses_the_packages_int8_graph() -> None:
    manifest = read_manifest(DEFAULT_PACKAGE)
    graph_path = source_graph(DEFAULT_PACKAGE, manifest, EngineConfig(int8=True))
    assert graph_path == DEFAULT_PACKAGE / manifest.graph_file("int8")[0] == DEFAULT_PACKAGE / "model.int8.onnx"
    graph = onnx.load(str(graph_path))
    assert graph_precision(graph) == "int8"
    check_graph_io(graph, manifest, graph_path)


def _without_int8_graph(package: Path) -> str:
    (package / "model.int8.onnx").unlink()
    read_manifest(package).model_copy(update={"graphs": []}).write(package)
    return f"{package}: the package has no int8 graph (it has fp32); make one with `python -m model_export quantize --package {package} --calibration IMAGES`"


def _with_another_int8_graph(package: Path) -> str:
    with (package / "model.int8.onnx").open("ab") as graph:
        graph.write(b"\0")
    return f"{package / 'model.int8.onnx'}: its SHA-256 differs from the manifest's"


@pytest.mark.parametrize("damage", [_without_int8_graph, _with_another_int8_graph])
def test_int8_build_checks_the_int8_graph_before_tensorrt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], damage: Callable[[Path], str]
) -> None:
    package = tmp_path / "package"
    shutil.copytree(DEFAULT_PACKAGE, package)
    expected = damage(package)
    # TensorRT's import fails on this host too, with another message: the package's check must come first, on any host.
    monkeypatch.setattr("model_export.engine._import_tensorrt", lambda: pytest.fail("TensorRT was imported before the package's check"))
    assert main(["build-engine", "--package", str(package), "--int8"]) == 2
    assert expected in capsys.readouterr().err


def test_a_graph_with_other_outputs_than_the_package_is_refused(fp32_graph: onnx.ModelProto) -> None:
    changed = onnx.ModelProto()
    changed.CopyFrom(fp32_graph)
    changed.graph.output[1].type.tensor_type.elem_type = TensorProto.FLOAT16
    with pytest.raises(EngineBuildError, match="boxes: float16, the package says float32"):
        check_graph_io(changed, read_manifest(DEFAULT_PACKAGE), Path("other.onnx"))


@pytest.mark.parametrize("options", [["--fp16", "--graph", "other.onnx"], ["--int8", "--fp16"], ["--int8", "--graph", "other.onnx"]])
def test_build_engine_takes_one_of_fp16_int8_and_a_graph(tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["build-engine", "--package", str(tmp_path), *options])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# The TensorRT 11 API: what the code may not call, checked everywhere; what it calls, checked where TensorRT is installed

TENSORRT_CODE = [REPO / "model_export" / "engine.py", REPO / "service" / "engines" / "tensorrt.py"]
REMOVED_IN_11 = ["BuilderFlag.FP16", "BuilderFlag.INT8", "BuilderFlag.BF16", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
REMOVED_IN_11 += ["int8_calibrator", "platform_has_fast_fp16", "EXPLICIT_BATCH", "execute_async_v2", "get_binding_", "set_binding_shape"]
# Methods the code calls on TensorRT's objects, by class.
TENSORRT_METHODS = {
    "Builder": ["create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network"],
    "OnnxParser": ["parse_from_file", "get_error", "num_errors"],
    "IBuilderConfig": [
        *["set_memory_pool_limit", "clear_flag", "add_optimization_profile", "create_timing_cache", "set_timing_cache", "get_timing_cache"],
    ],
    "IOptimizationProfile": ["set_shape"],
    "ITimingCache": ["serialize"],
    "Runtime": ["deserialize_cuda_engine"],
    "ICudaEngine": [
        *["num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype", "get_tensor_location"],
        *["get_tensor_profile_shape", "create_execution_context"],
    ],
    "IExecutionContext": ["set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3"],
}


def test_tensorrt_code_uses_no_api_removed_in_tensorrt_11() -> None:
    for path in TENSORRT_CODE:
        used = [name for name in REMOVED_IN_11 if name in _code_without_text(path.read_text())]
        assert not used, f"{path.name} uses {used}, removed in TensorRT 11"


def _code_without_text(code: str) -> str:
    """The code with its comments and strings left out: docstrings may name the removed flags, calls may not."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = ""
    return ast.unparse(tree)


def _trt_attribute_chains(path: Path) -> set[str]:
    """Every ``trt.A.B...`` (or ``self._trt.A.B...``) the file spells out: how the two files name the tensorrt module."""
    chains = set()
    for node in ast.walk(ast.parse(path.read_text())):
        parts = []
        while isinstance(node, ast.Attribute) and not _is_tensorrt_module(node):
            parts.append(node.attr)
            node = node.value
        if _is_tensorrt_module(node) and parts:
            chains.add(".".join(reversed(parts)))
    return chains


def _is_tensorrt_module(node: ast.expr) -> bool:
    is_self_trt = isinstance(node, ast.Attribute) and node.attr == "_trt" and isinstance(node.value, ast.Name) and node.value.id == "self"
    return is_self_trt or (isinstance(node, ast.Name) and node.id == "trt")


def test_the_tensorrt_code_is_seen_by_the_name_check() -> None:
    """The name check below runs only where TensorRT is installed; that it reads the code is checked everywhere."""
    assert {"Builder", "OnnxParser", "MemoryPoolType.WORKSPACE", "BuilderFlag.TF32"} <= _trt_attribute_chains(TENSORRT_CODE[0])
    assert {"Runtime", "TensorIOMode.INPUT", "TensorLocation.HOST", "nptype"} <= _trt_attribute_chains(TENSORRT_CODE[1])


def test_every_tensorrt_name_the_code_uses_exists_in_the_installed_tensorrt() -> None:
    trt = pytest.importorskip(
        "tensorrt", reason="TensorRT is not installed (pip install -e '.[tensorrt]'; its libraries come from NVIDIA's index)"
    )
    assert int(trt.__version__.split(".")[0]) >= 11, f"the code is written for TensorRT 11, this is {trt.__version__}"
    for path in TENSORRT_CODE:
        for chain in _trt_attribute_chains(path):
            target = trt
            for part in chain.split("."):
                assert hasattr(target, part), f"{path.name}: trt.{chain} does not exist in TensorRT {trt.__version__}"
                target = getattr(target, part)
    missing = [f"{cls}.{name}" for cls, names in TENSORRT_METHODS.items() for name in names if not hasattr(getattr(trt, cls), name)]
    assert not missing, f"not in TensorRT {trt.__version__}: {missing}"
    assert not hasattr(trt.BuilderFlag, "FP16"), "TensorRT 11 has no FP16 builder flag; the fp16 path relies on that"


def test_the_method_list_names_only_calls_the_code_makes() -> None:
    code = "\n".join(path.read_text() for path in TENSORRT_CODE)
    unused = [name for names in TENSORRT_METHODS.values() for name in names if f".{name}" not in code]
    assert not unused, f"listed but not called: {unused}"


def test_cuda_runtime_names_exist_and_errors_name_the_call() -> None:
    cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-bindings is not installed (pip install -e '.[tensorrt]')")
    from service.engines.cuda import CudaError, check
    from service.gpu import has_gpu

    for name in ("cudaGetDeviceProperties", "cudaStreamCreate", "cudaStreamSynchronize", "cudaStreamDestroy", "cudaMalloc", "cudaFree"):
        assert hasattr(cudart, name), name
    assert hasattr(cudart.cudaMemcpyKind, "cudaMemcpyHostToDevice") and hasattr(cudart.cudaMemcpyKind, "cudaMemcpyDeviceToHost")
    if has_gpu():
        assert check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount") >= 1
    else:
        with pytest.raises(CudaError, match=r"cudaGetDeviceCount failed: cudaError"):
            check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
