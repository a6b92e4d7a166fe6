"""TensorRT engine: the package's prebuilt engine for this GPU, run with TensorRT's Python API.

GPU hosts only (``pip install -e '.[serve-gpu,tensorrt]'``). Buffers for the
largest batch are allocated once; each run copies the batch in, executes on
one CUDA stream and copies the padded outputs back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from service.engines.base import BatchOutput
from service.manifest import ModelManifest, PackageError

OUTPUTS = ("num_detections", "boxes", "scores", "labels")


def find_engine(package: Path, gpu_name: str) -> tuple[Path, dict[str, Any]]:
    """The engine in the package built for this GPU, and its manifest."""
    # build-engine writes model.<gpu>.<precision>.engine beside its manifest model.<gpu>.<precision>.json.
    for manifest_path in sorted(Path(package).glob("model.*.*.json")):
        info = json.loads(manifest_path.read_text())
        if info.get("gpu") == gpu_name and (Path(package) / info["engine_file"]).is_file():
            return Path(package) / info["engine_file"], info
    raise PackageError(f"{package}: no TensorRT engine built for {gpu_name}; run: python -m model_export build-engine --package {package}")


def _check(result: Any) -> Any:
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise RuntimeError(f"CUDA error {error}")
    return values[0] if len(values) == 1 else values


class TensorRTEngine:
    def __init__(self, package: Path, manifest: ModelManifest) -> None:
        import tensorrt as trt
        from cuda.bindings import runtime as cudart

        self._trt, self._cudart = trt, cudart
        self.manifest = manifest
        gpu_name = _check(cudart.cudaGetDeviceProperties(0)).name.decode().rstrip("\x00")
        engine_path, self.info = find_engine(package, gpu_name)
        if self.info.get("onnx_sha256") != manifest.onnx_sha256:
            raise PackageError(f"{engine_path}: built from another model.onnx; rebuild it with model_export build-engine")
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise PackageError(f"{engine_path}: TensorRT could not load the engine (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.max_batch = min(manifest.max_batch, int(self.info["profile"]["images"]["max"]))
        self.stream = _check(cudart.cudaStreamCreate())
        self.buffers: dict[str, tuple[int, np.ndarray]] = {}
        height, width = manifest.canvas
        k = manifest.max_detections
        shapes = {
            "images": ((self.max_batch, height, width, 3), np.uint8),
            "score_threshold": ((), np.float32),
            "iou_threshold": ((), np.float32),
            "num_detections": ((self.max_batch,), np.int64),
            "boxes": ((self.max_batch, k, 4), np.float32),
            "scores": ((self.max_batch, k), np.float32),
            "labels": ((self.max_batch, k), np.int64),
        }
        for name, (shape, dtype) in shapes.items():
            dtype = trt.nptype(self.engine.get_tensor_dtype(name)) if name in OUTPUTS else dtype
            host = np.zeros(shape, dtype=dtype)
            device = _check(cudart.cudaMalloc(max(host.nbytes, 1)))
            self.buffers[name] = (device, host)
            self.context.set_tensor_address(name, device)

    def _copy_in(self, name: str, value: np.ndarray) -> None:
        device, _ = self.buffers[name]
        _check(
            self._cudart.cudaMemcpyAsync(
                device, value.ctypes.data, value.nbytes, self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream
            )
        )

    def run(self, images: np.ndarray, score_threshold: float, iou_threshold: float) -> BatchOutput:
        batch = images.shape[0]
        images = np.ascontiguousarray(images, dtype=np.uint8)
        self.context.set_input_shape("images", images.shape)
        self._copy_in("images", images)
        self._copy_in("score_threshold", np.array(score_threshold, dtype=np.float32))
        self._copy_in("iou_threshold", np.array(iou_threshold, dtype=np.float32))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        results = []
        for name in OUTPUTS:
            device, host = self.buffers[name]
            part = np.ascontiguousarray(host[:batch])
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            _check(self._cudart.cudaMemcpyAsync(part.ctypes.data, device, part.nbytes, kind, self.stream))
            results.append(part)
        _check(self._cudart.cudaStreamSynchronize(self.stream))
        counts, boxes, scores, labels = results
        return BatchOutput(counts.astype(np.int64), boxes, scores, labels.astype(np.int64))

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "tensorrt",
            "provider": "TensorRT",
            "tensorrt": self._trt.__version__,
            "gpu": self.info.get("gpu"),
            "precision": self.info.get("precision"),
            "profile": self.info.get("profile"),
        }
