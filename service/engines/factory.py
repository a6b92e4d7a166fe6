"""Builds the engine a configuration names. Each engine's runtime is imported only when that engine is built:
the service starts without TensorRT or OpenVINO installed when it does not use them. ``service.engines.choice``
decides which configuration to build where the settings leave it to auto."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.engines.base import GRAPH_OF, Engine, Precision
from service.engines.engine_manifest import Precision as TensorRTPrecision
from service.manifest import GraphPrecision, ModelManifest, verify_graph_file

if TYPE_CHECKING:  # service.settings imports service.engines.base: a runtime import here would be circular
    from service.settings import Settings

# DETECTOR_PRECISION in TensorRT's names; auto (None) takes the most reduced engine built for this GPU.
TENSORRT_PRECISION: dict[str, TensorRTPrecision | None] = {"auto": None, "f32": "fp32", "int8": "int8"}


def engine_precision(settings: Settings) -> Precision:
    """What ONNX Runtime or OpenVINO computes in: DETECTOR_PRECISION, auto read as f32 (the float graph)."""
    return "f32" if settings.precision == "auto" else settings.precision


def package_graph(settings: Settings) -> GraphPrecision:
    """The package's graph the engine reads, the one to verify: the precision's graph; for TensorRT the float graph,
    which its engines are matched to (by model.onnx's SHA-256)."""
    return "fp32" if settings.engine == "tensorrt" else GRAPH_OF[engine_precision(settings)]


def create_engine(settings: Settings, manifest: ModelManifest) -> Engine:
    """The engine of ``settings.engine`` and ``settings.precision``, on the package's verified graph. Left to auto, they
    read as ONNX Runtime and f32 here: ``choice.choose_engine`` is what resolves auto."""
    verify_graph_file(settings.model_dir, manifest, package_graph(settings))
    if settings.engine == "tensorrt":
        from service.engines.tensorrt import TensorRTEngine

        return TensorRTEngine(settings.model_dir, manifest, TENSORRT_PRECISION[settings.precision])
    if settings.engine == "openvino":
        try:
            from service.engines.openvino import OpenVinoEngine
        except ImportError as error:
            raise RuntimeError(f"DETECTOR_ENGINE=openvino needs OpenVINO: pip install -e '.[openvino]' ({error})") from error

        return OpenVinoEngine(settings.model_dir, manifest, engine_precision(settings), threads=settings.intra_op_threads)
    from service.engines.onnxruntime import OnnxRuntimeEngine

    return OnnxRuntimeEngine(
        settings.model_dir,
        manifest,
        providers=settings.provider_list,
        intra_op_threads=settings.intra_op_threads,
        trt_fp16=settings.trt_fp16,
        trt_cache_dir=settings.trt_cache_dir,
        precision=engine_precision(settings),
    )
