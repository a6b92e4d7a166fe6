"""The systems under test on one device: the service with batching on and off, and the naive eager baseline."""

from __future__ import annotations

import onnxruntime

from bench.config import BenchConfig
from bench.servers import ServerSpec
from service.gpu import has_gpu
from service.manifest import ModelManifest

GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}


def gpu_present() -> bool:
    """An NVIDIA GPU, and an onnxruntime that can use it."""
    return has_gpu() and bool(GPU_PROVIDERS & set(onnxruntime.get_available_providers()))


def engine_env(config: BenchConfig, device: str) -> dict[str, str]:
    """The DETECTOR_* variables that choose the engine, for the service and the raw engine alike."""
    env = {"DETECTOR_INTRA_OP_THREADS": str(config.threads)}
    if device == "cpu":
        return env | {"DETECTOR_ENGINE": "onnxruntime", "DETECTOR_PROVIDERS": "cpu"}
    if config.gpu_engine == "tensorrt":
        return env | {"DETECTOR_ENGINE": "tensorrt"}
    return env | {"DETECTOR_ENGINE": "onnxruntime", "DETECTOR_PROVIDERS": config.gpu_providers}


def effective_batch(config: BenchConfig, manifest: ModelManifest) -> int:
    """The service's largest batch: its setting, capped by the graph's max_batch."""
    return min(config.max_batch_size, manifest.max_batch)


def service_spec(config: BenchConfig, manifest: ModelManifest, device: str, batching: bool) -> ServerSpec:
    batch = effective_batch(config, manifest) if batching else 1
    env = engine_env(config, device) | {
        "DETECTOR_MODEL_DIR": str(config.package),
        "DETECTOR_MAX_BATCH_SIZE": str(batch),
        "DETECTOR_MAX_BATCH_WAIT_MS": str(config.max_batch_wait_ms),
        "DETECTOR_MAX_QUEUE": str(config.max_queue),
        "DETECTOR_HOST": "127.0.0.1",
        "DETECTOR_LOG_LEVEL": "warning",
        "DETECTOR_SHUTDOWN_GRACE_S": "5",  # once the benchmark stops it, requests still queued need no answer
    }
    return ServerSpec(
        name="service_batching" if batching else "service_unbatched",
        label=f"service, batching on (max {batch})" if batching else "service, batching off",
        module="service",
        env=env,
        info_path=f"/v1/models/{manifest.name}",
        metrics_path="/metrics",
        port_env="DETECTOR_PORT",
    )


def naive_spec(config: BenchConfig, device: str) -> ServerSpec:
    threads = config.threads if config.naive_threads is None else config.naive_threads
    args: tuple[str, ...] = ("--checkpoint", str(config.checkpoint), "--package", str(config.package), "--threads", str(threads))
    args += ("--device", "cuda" if device == "gpu" else "cpu")
    return ServerSpec(
        name="naive", label="naive eager FastAPI", module="bench.naive_server", args=args, ready_path="/health", info_path="/info"
    )


def system_specs(config: BenchConfig, manifest: ModelManifest, device: str) -> list[ServerSpec]:
    return [
        service_spec(config, manifest, device, batching=True),
        service_spec(config, manifest, device, batching=False),
        naive_spec(config, device),
    ]
