"""ONNX Runtime engine: TensorRT, CUDA or CPU execution providers, chosen by setting."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.engines.base import GRAPH_OF, BatchOutput, EngineInfo, Precision
from service.manifest import ModelManifest, PackageError, check_ports

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ["tensorrt", "cuda", "cpu"]


def choose_providers(asked: Sequence[str] | None, available: list[str]) -> list[str]:
    """The execution providers to use, in order: the asked ones (all must be available), or for auto
    every one of TensorRT, CUDA and CPU that this onnxruntime build offers."""
    if asked is None:
        return [PROVIDER_NAMES[name] for name in AUTO_ORDER if PROVIDER_NAMES[name] in available]
    missing = [name for name in asked if PROVIDER_NAMES[name] not in available]
    if missing:
        raise RuntimeError(f"DETECTOR_PROVIDERS asks for {', '.join(missing)}, but this onnxruntime offers only {', '.join(available)}")
    return [PROVIDER_NAMES[name] for name in asked]


def provider_options(provider: str, fp16: bool, cache_dir: Path | None, *, int8: bool = False) -> dict[str, Any]:
    """ONNX Runtime's options for one execution provider: the TensorRT provider's precision and engine cache; none for the others.

    The TensorRT that the provider links is TensorRT 10, not the TensorRT 11 of ``build-engine`` and the tensorrt engine:
    onnxruntime-gpu 1.31.1's ``libonnxruntime_providers_tensorrt.so`` needs ``libnvinfer.so.10`` and
    ``libnvonnxparser.so.10`` (with CUDA 13's ``libcudart.so.13`` and cuDNN 9), which must be on the loader's path.
    TensorRT 10 builds weakly typed networks, so the precision is the builder's flags:

    * ``trt_fp16_enable`` (``fp16``, DETECTOR_TRT_FP16) lets TensorRT pick fp16 kernels for float32 layers;
    * ``trt_int8_enable`` (``int8``: the session runs the package's int8 Q/DQ graph) sets the INT8 flag, without which
      TensorRT 10 refuses a network with Q/DQ layers. No calibration table is named, so the provider reads none
      and TensorRT takes each scale from the graph's Q/DQ nodes (explicit quantization). With fp16 too, the layers
      outside the Q/DQ pairs may run in fp16.
    """
    if provider != PROVIDER_NAMES["tensorrt"]:
        return {}
    options: dict[str, Any] = {"trt_fp16_enable": fp16}
    if int8:
        options["trt_int8_enable"] = True
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Engines and timing caches per subgraph and GPU kind: a restart reuses them instead of building for minutes.
        options |= {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache_dir),
        }
    return options


def check_started(chosen: Sequence[str], started: Sequence[str], explicit: bool) -> list[str]:
    """The chosen providers ONNX Runtime could not start (it falls back to the next ones silently, but for a log line).

    Asked for by name (``explicit``), a provider that did not start is an error: running on another would hide it.
    """
    missing = [name for name in chosen if name not in started]
    if missing and explicit:
        raise RuntimeError(
            f"ONNX Runtime could not start {', '.join(missing)} (see its log above for the library it lacks); it offered {', '.join(started)}"
        )
    return missing


def uses_gpu(providers: Sequence[str]) -> bool:
    return any(name in (PROVIDER_NAMES["tensorrt"], PROVIDER_NAMES["cuda"]) for name in providers)


ONNX_TYPES = {"tensor(uint8)": "uint8", "tensor(float)": "float32", "tensor(int64)": "int64"}


def check_signature(session: ort.InferenceSession, manifest: ModelManifest, path: Path) -> None:
    """The graph's inputs and outputs must be the manifest's: names, element types and fixed dimensions."""
    for kind, declared, nodes in (("input", manifest.inputs, session.get_inputs()), ("output", manifest.outputs, session.get_outputs())):
        found = {
            node.name: (ONNX_TYPES.get(node.type, node.type), [d if isinstance(d, int) else None for d in node.shape]) for node in nodes
        }
        check_ports(path, kind, declared, found)


class OnnxRuntimeEngine:
    def __init__(
        self,
        package: Path,
        manifest: ModelManifest,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        trt_fp16: bool = False,
        trt_cache_dir: Path | None = None,
        precision: Precision = "f32",
    ) -> None:
        """``precision`` f32 runs the package's float graph, int8 its int8 (Q/DQ) graph; bf16 is OpenVINO's alone."""
        if precision == "bf16":
            raise ValueError("ONNX Runtime runs the f32 or the int8 graph; bf16 is the openvino engine's (DETECTOR_ENGINE=openvino)")
        self.manifest = manifest
        self.precision = precision
        self.max_batch = manifest.max_batch
        chosen = choose_providers(providers, ort.get_available_providers())
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle inference threads sleep instead of spinning: the decode threads share these cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.graph_file = manifest.graph_file(GRAPH_OF[precision])[0]
        path = Path(package) / self.graph_file
        if uses_gpu(chosen):
            # The CUDA and cuDNN libraries of the nvidia-* wheels are not on the loader's path; torch would load them, the service has none.
            ort.preload_dlls()
        try:
            self.session = ort.InferenceSession(
                str(path),
                options,
                providers=[(name, provider_options(name, trt_fp16, trt_cache_dir, int8=precision == "int8")) for name in chosen],
            )
        except Exception as error:  # onnxruntime raises its own types for a broken protobuf or graph
            raise PackageError(f"{path}: ONNX Runtime cannot load this graph: {error}") from error
        check_signature(self.session, manifest, path)
        self.providers = self.session.get_providers()
        missing = check_started(chosen, self.providers, explicit=providers is not None)
        if missing:
            log.warning("execution providers did not start", extra={"missing": missing, "providers": self.providers})
        self.intra_op_threads = intra_op_threads
        self.trt_fp16 = trt_fp16
        log.info("onnxruntime session ready", extra={"providers": self.providers})

    def run(self, images: np.ndarray, score_threshold: float, iou_threshold: float) -> BatchOutput:
        feed = {
            "images": np.ascontiguousarray(images, dtype=np.uint8),
            "score_threshold": np.array(score_threshold, dtype=np.float32),
            "iou_threshold": np.array(iou_threshold, dtype=np.float32),
        }
        counts, boxes, scores, labels = self.session.run(["num_detections", "boxes", "scores", "labels"], feed)
        return BatchOutput(counts, boxes, scores, labels)

    def describe(self) -> EngineInfo:
        provider = self.providers[0]
        fp16 = self.trt_fp16 and provider == PROVIDER_NAMES["tensorrt"]
        return EngineInfo(
            engine="onnxruntime",
            provider=provider,
            device="gpu" if uses_gpu([provider]) else "cpu",
            precision="int8" if self.precision == "int8" else "fp16" if fp16 else "fp32",
            version=ort.__version__,
            details={"providers": self.providers, "intra_op_threads": self.intra_op_threads, "graph_file": self.graph_file},
        )
