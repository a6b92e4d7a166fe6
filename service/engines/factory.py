"""Builds the engine the settings ask for."""

from __future__ import annotations

from service.engines.base import Engine
from service.manifest import ModelManifest
from service.settings import Settings


def create_engine(settings: Settings, manifest: ModelManifest) -> Engine:
    if settings.engine == "tensorrt":
        from service.engines.tensorrt import TensorRTEngine

        return TensorRTEngine(settings.model_dir, manifest)
    from service.engines.onnxruntime import OnnxRuntimeEngine

    return OnnxRuntimeEngine(
        settings.model_dir,
        manifest,
        providers=settings.provider_list,
        intra_op_threads=settings.intra_op_threads,
        trt_fp16=settings.trt_fp16,
        trt_cache_dir=settings.trt_cache_dir,
    )
