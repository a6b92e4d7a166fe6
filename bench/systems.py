"""The systems section: per device, the raw engine at fixed batch sizes, then each server in turn under every client count.

The systems are the service with batching on and off and the naive eager baseline. Servers run one at a time,
each in its own process, with the load generator in another; this process only waits meanwhile.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

from bench import compare, raw_engine
from bench.config import BenchConfig, progress
from bench.figures import Level, RawResult, Run, SystemResult, SystemsSection
from bench.images import ImageSet
from bench.load import LoadError, run_load_process
from bench.scrape import batch_sizes
from bench.servers import HOST, PORT_FIELD, ServerError, ServerProcess, ServerSpec, python_module, service_spec
from service.engines.base import EngineInfo
from service.manifest import ModelManifest

# Before its levels, each server answers this many clients twice each (batches of every size for the service).
WARM_UP_CLIENTS = 16


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


def service_env(config: BenchConfig, device: str, max_batch_size: int, max_queue: int | None = None) -> dict[str, str]:
    """The service's settings: the engine, the batcher's policy, quiet logs."""
    return engine_env(config, device) | {
        "DETECTOR_MODEL_DIR": str(config.package),
        "DETECTOR_MAX_BATCH_SIZE": str(max_batch_size),
        "DETECTOR_MAX_BATCH_WAIT_MS": str(config.max_batch_wait_ms),
        "DETECTOR_MAX_QUEUE": str(config.max_queue if max_queue is None else max_queue),
        "DETECTOR_LOG_LEVEL": "warning",
        "DETECTOR_SHUTDOWN_GRACE_S": "5",  # once the benchmark stops it, requests still queued need no answer
    }


def batching_spec(config: BenchConfig, manifest: ModelManifest, device: str, batching: bool) -> ServerSpec:
    batch = effective_batch(config, manifest) if batching else 1
    return service_spec(
        service_env(config, device, batch),
        name="service_batching" if batching else "service_unbatched",
        label=f"service, batching on (max {batch})" if batching else "service, batching off",
        info_path=f"/v1/models/{manifest.name}",
    )


def naive_spec(config: BenchConfig, device: str) -> ServerSpec:
    threads = config.threads if config.naive_threads is None else config.naive_threads
    args = ["--checkpoint", str(config.checkpoint), "--package", str(config.package), "--threads", str(threads)]
    args += ["--device", "cuda" if device == "gpu" else "cpu", "--host", HOST, "--port", PORT_FIELD]
    return ServerSpec(
        name="naive",
        label="naive eager FastAPI",
        command=python_module("bench.naive_server", *args),
        ready_path="/health",
        info_path="/info",
    )


def system_specs(config: BenchConfig, manifest: ModelManifest, device: str) -> list[ServerSpec]:
    return [
        batching_spec(config, manifest, device, batching=True),
        batching_spec(config, manifest, device, batching=False),
        naive_spec(config, device),
    ]


def measure(config: BenchConfig, manifest: ModelManifest, images: ImageSet, device: str, run: Run) -> SystemsSection:
    engine, raw = measure_raw_engine(config, manifest, images, device)
    systems = [measure_system(config, spec, images.directory, device) for spec in system_specs(config, manifest, device)]
    section = SystemsSection(run=run, engine=engine, service_max_batch=effective_batch(config, manifest), raw_engine=raw, systems=systems)
    section.ratios = compare.ratios(section)
    section.goals = compare.goals(section)
    return section


def measure_raw_engine(config: BenchConfig, manifest: ModelManifest, images: ImageSet, device: str) -> tuple[EngineInfo, list[RawResult]]:
    engine = raw_engine.build_engine(config.package, manifest, engine_env(config, device))
    canvases = raw_engine.canvases(images.bodies, manifest.canvas)
    batches = sorted({b for b in config.raw_batches if b <= manifest.max_batch} | {effective_batch(config, manifest)})
    results = []
    for batch in batches:
        results.append(raw_engine.measure(engine, canvases, batch, config.raw_images, manifest.score_threshold, manifest.iou_threshold))
        progress(f"[{device}] raw engine, batch {batch}: {results[-1].images_per_s} images/s")
    description = engine.describe()
    del engine  # its threads and memory go before the servers start
    gc.collect()
    return description, results


def measure_system(config: BenchConfig, spec: ServerSpec, images_dir: Path, device: str) -> SystemResult:
    result = SystemResult(name=spec.name, label=spec.label, settings=spec.settings())
    started = time.monotonic()
    try:
        with ServerProcess(spec) as server:
            result.runtime = server.info()
            plan = config.plan
            run_load_process(
                server.port, images_dir, min(WARM_UP_CLIENTS, max(plan.clients)), 2, plan.level_time_limit_s, plan.level_grace_s
            )
            for clients in plan.clients:
                result.levels.append(measure_level(config, server, images_dir, clients))
                progress(f"[{device}] {spec.label}, {clients} clients: {_summary(result.levels[-1])}")
            result.peak_rss_mb = server.peak_rss_mb()
    except (ServerError, LoadError) as error:
        result.error = str(error)
        progress(f"[{device}] {spec.label}: not measured: {error}")
    result.seconds = round(time.monotonic() - started, 1)
    progress(f"[{device}] {spec.label}: {result.seconds} s in all")
    return result


def measure_level(config: BenchConfig, server: ServerProcess, images_dir: Path, clients: int) -> Level:
    """One client count; the batch sizes are what /metrics counted between just before and just after it."""
    before = server.metrics()
    plan = config.plan
    load = run_load_process(
        server.port, images_dir, clients, plan.requests_per_client(clients), plan.level_time_limit_s, plan.level_grace_s
    )
    after = server.metrics()
    return Level(load=load, batch_sizes=batch_sizes(before, after) if before is not None and after is not None else None)


def _summary(level: Level) -> str:
    load = level.load
    p99 = load.latency_ms.p99 if load.latency_ms else None
    batch = f", mean batch {level.batch_sizes.mean}" if level.batch_sizes else ""
    early = "" if load.complete else f", stopped by the time limit after {load.completed} requests ({load.abandoned} abandoned)"
    return f"{load.images_per_s} images/s, p99 {p99} ms, status {load.status}{batch}{early}"
