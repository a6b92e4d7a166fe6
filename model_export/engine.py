"""TensorRT engine build from a model package, with TensorRT 11's Python API (GPU hosts only).

TensorRT 11 networks are strongly typed: every tensor's type comes from the
graph, and the weak-typing builder flags (FP16, INT8, BF16, the precision
constraints, the INT8 calibrator) are gone. The engine's precision is therefore
the graph's: the package's float32 ``model.onnx``; the fp16 graph that ``--fp16``
makes from it on the CPU (``model_export.precision``); with ``--int8`` the
package's int8 graph (``model.int8.onnx``, the one its manifest lists, checked by
its SHA-256), whose Q/DQ nodes carry the scales: TensorRT reads int8 from them
(explicit quantization), with no INT8 flag and no calibration; or a graph given
with ``--graph``, made from ``model.onnx`` by another tool (an fp16 graph, or an
int8 one with Q/DQ nodes).

What the build asks of the package (its manifest, the profile against the graph's
max batch, the graphs' hashes, an int8 graph for ``--int8``) is checked before
TensorRT is imported: a wrong package is told so on any host, GPU or not.

The engine covers the whole graph (NonMaxSuppression and RoiAlign are native
layers), with one optimization profile over the batch. It is written into the
package with its manifest, named after the GPU, since an engine only runs on
the GPU kind it was built for.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from model_export.command_errors import EngineBuildError, PrecisionError
from model_export.config import EngineConfig
from model_export.precision import graph_precision, write_fp16_graph
from service.engines.engine_manifest import BatchProfile, EngineManifest, gpu_slug
from service.gpu import gpu_problem
from service.manifest import ONNX_FILE, ModelManifest, read_manifest, sha256_of, verify_graph_file

MIN_TENSORRT_MAJOR = 11
FP16_GRAPH_FILE = "model.fp16.onnx"


def int8_graph(package: Path, manifest: ModelManifest) -> Path:
    """The package's int8 Q/DQ graph, if it is the very file its manifest lists (same SHA-256)."""
    if "int8" not in manifest.precisions:
        raise EngineBuildError(
            f"{package}: the package has no int8 graph (it has {', '.join(manifest.precisions)}); make one with "
            f"`python -m model_export quantize --package {package} --calibration IMAGES`, then build with --int8"
        )
    return verify_graph_file(package, manifest, "int8")


def check_package(package: Path, config: EngineConfig) -> ModelManifest:
    """What the build needs of the package, checked on the CPU before TensorRT is imported; returns its manifest."""
    manifest = read_manifest(package)
    if config.max_batch > manifest.max_batch:
        raise EngineBuildError(f"the profile's max batch {config.max_batch} exceeds the graph's max_batch {manifest.max_batch}")
    verify_graph_file(package, manifest)  # the engine's manifest names this model.onnx by its hash: it must be the one
    if config.int8:
        int8_graph(package, manifest)
    if config.graph is not None and not config.graph.is_file():
        raise EngineBuildError(f"--graph {config.graph}: no such file")
    return manifest


def source_graph(package: Path, manifest: ModelManifest, config: EngineConfig) -> Path:
    """The graph TensorRT parses: --graph, the package's int8 graph, the fp16 graph made from model.onnx (written into
    the package), or model.onnx."""
    if config.graph is not None:
        return config.graph
    if config.int8:
        return int8_graph(package, manifest)
    if config.fp16:
        try:
            return write_fp16_graph(package / ONNX_FILE, package / FP16_GRAPH_FILE)
        except PrecisionError as error:
            raise EngineBuildError(f"{package / ONNX_FILE}: no fp16 graph can be made from it: {error}") from error
    return package / ONNX_FILE


def check_graph_io(model: onnx.ModelProto, manifest: ModelManifest, path: Path) -> None:
    """The graph's inputs and outputs must be the package's (names and element types), whatever its inner precision."""
    declared = {spec.name: spec.dtype for spec in [*manifest.inputs, *manifest.outputs]}
    actual = {
        tensor.name: onnx.helper.tensor_dtype_to_np_dtype(tensor.type.tensor_type.elem_type).name
        for tensor in [*model.graph.input, *model.graph.output]
    }
    wrong = [
        f"{name}: {actual.get(name, 'missing')}, the package says {dtype}" for name, dtype in declared.items() if actual.get(name) != dtype
    ]
    if wrong:
        raise EngineBuildError(f"{path}: its inputs and outputs are not the package's: " + "; ".join(wrong))


def _import_tensorrt() -> Any:
    problem = gpu_problem()
    if problem is not None:
        raise EngineBuildError(f"{problem} (TensorRT engines are built on, and for, the GPU that will run them)")
    try:
        import tensorrt
    except ImportError as error:
        raise EngineBuildError("TensorRT's Python package is not installed: pip install -e '.[tensorrt]'") from error
    if int(tensorrt.__version__.split(".")[0]) < MIN_TENSORRT_MAJOR:
        raise EngineBuildError(
            f"TensorRT {tensorrt.__version__} is installed; this build needs {MIN_TENSORRT_MAJOR} (strongly typed networks)"
        )
    return tensorrt


def build_engine(package: Path, config: EngineConfig, progress: Callable[[str], None] = lambda _: None) -> Path:
    """Builds the engine into the package; returns its path. Raises EngineBuildError with every parser error."""
    package = Path(package)
    manifest = check_package(package, config)
    trt = _import_tensorrt()
    from service.engines.cuda import device_name

    graph_path = source_graph(package, manifest, config)
    model = onnx.load(str(graph_path))
    check_graph_io(model, manifest, graph_path)
    gpu, precision = device_name(), graph_precision(model)
    progress(
        f"building a {precision} TensorRT {trt.__version__} engine of {graph_path.name} for {gpu}, batches {config.min_batch}..{config.max_batch}"
    )
    cache_path = package / f"tensorrt.{gpu_slug(gpu)}.timing.cache"
    serialized = _serialize(trt, graph_path, manifest.canvas, config, precision, cache_path)
    engine_path = package / f"{EngineManifest.file_stem(gpu, precision)}.engine"
    engine_path.write_bytes(memoryview(serialized))
    EngineManifest(
        engine_file=engine_path.name,
        tensorrt=trt.__version__,
        gpu=gpu,
        precision=precision,
        profile=BatchProfile(min=config.min_batch, opt=config.opt_batch, max=config.max_batch),
        onnx_sha256=manifest.onnx_sha256,
        graph_file=graph_path.name,
        graph_sha256=sha256_of(graph_path),
        workspace_mb=config.workspace_mb,
    ).write(package)
    return engine_path


def _parse(trt: Any, builder: Any, logger: Any, graph_path: Path) -> Any:
    # Creation flags 0: TensorRT 11 networks are always strongly typed (its STRONGLY_TYPED flag is deprecated and ignored).
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph_path)):
        errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
        raise EngineBuildError(f"{graph_path}: TensorRT's ONNX parser reported {len(errors)} error(s):\n  " + "\n  ".join(errors))
    return network


def _serialize(trt: Any, graph_path: Path, canvas: tuple[int, int], config: EngineConfig, precision: str, cache_path: Path) -> Any:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse(trt, builder, logger, graph_path)
    build_config = builder.create_builder_config()
    build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    if precision == "fp32":
        # TF32 (on by default) rounds float32 convolutions to a 10-bit mantissa: an engine called fp32 computes in fp32.
        build_config.clear_flag(trt.BuilderFlag.TF32)
    height, width = canvas
    profile = builder.create_optimization_profile()
    shapes = [(batch, height, width, 3) for batch in (config.min_batch, config.opt_batch, config.max_batch)]
    profile.set_shape("images", *shapes)
    build_config.add_optimization_profile(profile)
    # The timing cache (per GPU kind) makes a rebuild on the same GPU take seconds instead of minutes.
    cache = build_config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    build_config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, build_config)
    if serialized is None:
        raise EngineBuildError(f"{graph_path}: TensorRT could not build an engine (see its log above)")
    cache_path.write_bytes(memoryview(build_config.get_timing_cache().serialize()))
    return serialized
