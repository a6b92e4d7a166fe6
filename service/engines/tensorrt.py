"""TensorRT engine: the package's prebuilt engine for this GPU, run with TensorRT 11's Python API.

GPU hosts only (``pip install -e '.[serve-gpu,tensorrt]'``). Buffers for the
profile's largest batch are allocated once. Each run sets the batch's input
shape (TensorRT says whether the profile allows it), checks the output shapes
TensorRT derives from it against the manifest's, copies the batch in, executes
on one CUDA stream and copies the padded outputs back.

The engine's optimization profile accepts batches from its min to its max. A
batch below the min is padded up to it with blank canvases and only its own
rows are returned: an image's detections never depend on the others in its
batch (DESIGN.md), so the padding changes nothing but the work done.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.engines.base import BatchOutput, EngineInfo
from service.engines.engine_manifest import BatchProfile, Precision, find_engine
from service.manifest import ModelManifest, PackageError

INPUTS = ("images", "score_threshold", "iou_threshold")
OUTPUTS = ("num_detections", "boxes", "scores", "labels")
# TensorRT keeps int64 outputs, or narrows them to int32: either is read back as int64.
TENSOR_DTYPES: dict[str, tuple[np.dtype, ...]] = {
    "images": (np.dtype(np.uint8),),
    "score_threshold": (np.dtype(np.float32),),
    "iou_threshold": (np.dtype(np.float32),),
    "num_detections": (np.dtype(np.int64), np.dtype(np.int32)),
    "boxes": (np.dtype(np.float32),),
    "scores": (np.dtype(np.float32),),
    "labels": (np.dtype(np.int64), np.dtype(np.int32)),
}


class EngineMismatch(PackageError):
    """The engine's tensors are not what the package's manifest declares; the message names each difference."""


def output_shapes(batch: int, k: int) -> dict[str, tuple[int, ...]]:
    """The graph's outputs for a batch, padded to K rows per image (DESIGN.md)."""
    return {"num_detections": (batch,), "boxes": (batch, k, 4), "scores": (batch, k), "labels": (batch, k)}


def check_output_shapes(actual: Mapping[str, Sequence[int]], batch: int, k: int) -> None:
    """The output shapes TensorRT derived for this batch must be the padded ones; -1 (data-dependent) is refused too."""
    expected = output_shapes(batch, k)
    wrong = [f"{name} is {tuple(actual[name])}, expected {shape}" for name, shape in expected.items() if tuple(actual[name]) != shape]
    if wrong:
        raise EngineMismatch(f"TensorRT's output shapes for a batch of {batch} differ from the manifest's: " + "; ".join(wrong))


def check_io(names: Mapping[str, tuple[bool, np.dtype]]) -> None:
    """``names``: every I/O tensor of the engine -> (is an input, element type). They must be the graph's contract."""
    problems = []
    for name in sorted(set(INPUTS + OUTPUTS) - set(names)):
        problems.append(f"{name!r} is missing")
    for name, (is_input, dtype) in sorted(names.items()):
        if name not in TENSOR_DTYPES:
            problems.append(f"{name!r} is not a tensor of the graph's contract")
        elif is_input != (name in INPUTS):
            problems.append(f"{name!r} should be an {'input' if name in INPUTS else 'output'}")
        elif dtype not in TENSOR_DTYPES[name]:
            problems.append(f"{name!r} is {dtype}, expected {' or '.join(str(d) for d in TENSOR_DTYPES[name])}")
    if problems:
        raise EngineMismatch("the engine's inputs and outputs differ from the graph's contract: " + "; ".join(problems))


def profile_of(shapes: Sequence[Sequence[int]], canvas: tuple[int, int]) -> BatchProfile:
    """The batch range of the min, opt and max shapes of ``images`` in the engine's profile, on the package's canvas."""
    low, opt, high = (tuple(shape) for shape in shapes)
    for shape in (low, opt, high):
        if shape[1:] != (*canvas, 3):
            raise EngineMismatch(f"the engine's profile has images of shape {shape}; the package's canvas is {canvas[0]}x{canvas[1]}")
    return BatchProfile(min=low[0], opt=opt[0], max=high[0])


def padded_size(batch: int, profile: BatchProfile) -> int:
    """The batch the engine runs for ``batch`` images: at least the profile's min; more than its max is refused."""
    if not 1 <= batch <= profile.max:
        raise ValueError(f"a batch of {batch} is outside the engine's profile {profile.min}..{profile.max}")
    return max(batch, profile.min)


def pad_batch(images: np.ndarray, size: int) -> np.ndarray:
    """images (ndarray[B, H, W, 3] uint8) followed by blank canvases up to ``size`` rows."""
    if len(images) >= size:
        return images
    return np.concatenate([images, np.zeros((size - len(images), *images.shape[1:]), dtype=images.dtype)])


@dataclass
class _Buffer:
    host: np.ndarray  # sized for the largest batch
    device: int  # 0 for a tensor TensorRT reads from host memory


class TensorRTEngine:
    def __init__(self, package: Path, manifest: ModelManifest, precision: Precision | None = None) -> None:
        import tensorrt as trt

        from service.engines.cuda import check, device_name

        self._trt, self._check = trt, check
        self.manifest = manifest
        self.gpu = device_name()
        engine_path, self.info = find_engine(package, self.gpu, manifest.onnx_sha256, precision)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise PackageError(f"{engine_path}: TensorRT {trt.__version__} could not load it (built by TensorRT {self.info.tensorrt})")
        check_io({name: self._io(name) for name in self._tensor_names()})
        self.profile = profile_of(self.engine.get_tensor_profile_shape("images", 0), manifest.canvas)
        self.max_batch = min(manifest.max_batch, self.profile.max)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"{engine_path}: TensorRT could not create an execution context (GPU memory?)")
        from cuda.bindings import runtime as cudart

        self._cudart = cudart
        self.stream = check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.buffers = {name: self._allocate(name, shape) for name, shape in self._largest_shapes().items()}

    def _tensor_names(self) -> list[str]:
        return [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]

    def _io(self, name: str) -> tuple[bool, np.dtype]:
        is_input = self.engine.get_tensor_mode(name) == self._trt.TensorIOMode.INPUT
        return is_input, np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))

    def _largest_shapes(self) -> dict[str, tuple[int, ...]]:
        height, width = self.manifest.canvas
        inputs = {"images": (self.profile.max, height, width, 3), "score_threshold": (), "iou_threshold": ()}
        return inputs | output_shapes(self.profile.max, self.manifest.max_detections)

    def _allocate(self, name: str, shape: tuple[int, ...]) -> _Buffer:
        host = np.zeros(shape, dtype=self._io(name)[1])
        # A tensor TensorRT reads on the host (a shape input) is given host memory; every other one device memory.
        on_host = self.engine.get_tensor_location(name) == self._trt.TensorLocation.HOST
        device = 0 if on_host else self._check(self._cudart.cudaMalloc(max(host.nbytes, 1)), "cudaMalloc")
        if not self.context.set_tensor_address(name, host.ctypes.data if on_host else device):
            raise RuntimeError(f"TensorRT refused the address of {name!r}")
        return _Buffer(host, device)

    def _copy_in(self, name: str, value: np.ndarray) -> None:
        buffer = self.buffers[name]
        part = buffer.host.reshape(-1)[: value.size].reshape(value.shape)
        np.copyto(part, value)
        if buffer.device:
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            self._check(self._cudart.cudaMemcpyAsync(buffer.device, part.ctypes.data, part.nbytes, kind, self.stream), "cudaMemcpyAsync")

    def _copy_out(self, name: str, rows: int) -> np.ndarray:
        buffer = self.buffers[name]
        part = buffer.host[:rows]
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._cudart.cudaMemcpyAsync(part.ctypes.data, buffer.device, part.nbytes, kind, self.stream), "cudaMemcpyAsync")
        return part

    def _set_batch(self, size: int) -> None:
        height, width = self.manifest.canvas
        if not self.context.set_input_shape("images", (size, height, width, 3)):
            raise RuntimeError(f"TensorRT refused a batch of {size} (the engine's profile is {self.profile.min}..{self.profile.max})")
        check_output_shapes({name: self.context.get_tensor_shape(name) for name in OUTPUTS}, size, self.manifest.max_detections)

    def run(self, images: np.ndarray, score_threshold: float, iou_threshold: float) -> BatchOutput:
        batch = len(images)
        size = padded_size(batch, self.profile)
        self._set_batch(size)
        self._copy_in("images", pad_batch(np.ascontiguousarray(images, dtype=np.uint8), size))
        self._copy_in("score_threshold", np.array(score_threshold, dtype=np.float32))
        self._copy_in("iou_threshold", np.array(iou_threshold, dtype=np.float32))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT could not enqueue the batch (see its log)")
        parts = [self._copy_out(name, size) for name in OUTPUTS]
        self._check(self._cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        # Copies: the host buffers are overwritten by the next batch.
        counts, boxes, scores, labels = (np.array(part[:batch]) for part in parts)
        return BatchOutput(counts.astype(np.int64), boxes, scores, labels.astype(np.int64))

    def close(self) -> None:
        """Frees the device buffers and the stream; the engine cannot run after."""
        for buffer in self.buffers.values():
            if buffer.device:
                self._check(self._cudart.cudaFree(buffer.device), "cudaFree")
        self.buffers = {}
        self._check(self._cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")

    def describe(self) -> EngineInfo:
        return EngineInfo(
            engine="tensorrt",
            provider="TensorRT",
            device="gpu",
            precision=self.info.precision,
            version=self._trt.__version__,
            details={"gpu": self.gpu, "profile": self.profile.model_dump(), "engine_file": self.info.engine_file},
        )
