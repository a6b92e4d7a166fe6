"""The few CUDA runtime calls the TensorRT engine needs, through NVIDIA's cuda-bindings (``pip install -e '.[tensorrt]'``)."""

from __future__ import annotations

from typing import Any

from cuda.bindings import runtime as cudart


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's error."""


def check(result: tuple[Any, ...], call: str) -> Any:
    """cuda-bindings return ``(error, *values)``: the values (one, or a tuple), or CudaError naming ``call``."""
    error, *values = result
    if int(error) != 0:
        name = cudart.cudaGetErrorName(error)[1]
        raise CudaError(f"{call} failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else tuple(values)


def device_name(device: int = 0) -> str:
    """The GPU's name as CUDA reports it (``NVIDIA H100 80GB HBM3``): engines are built for, and looked up by, this name."""
    properties = check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = properties.name
    return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00").strip()
