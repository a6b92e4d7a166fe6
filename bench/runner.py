"""One benchmark run: per device, the raw engine, then each server in turn under every client count.

Servers run one at a time, each in its own process, with the load generator in
another; this process only waits meanwhile. Progress goes to stderr.
"""

from __future__ import annotations

import datetime
import gc
import sys
import tempfile
import time
from pathlib import Path

from bench import compare, raw_engine
from bench.config import BenchConfig
from bench.figures import BenchResult, DeviceResult, Level, RawResult, SystemResult
from bench.images import ImageSet, write_images
from bench.load import LoadError, run_load_process
from bench.machine import describe
from bench.scrape import batch_sizes
from bench.servers import ServerError, ServerProcess, ServerSpec
from bench.systems import effective_batch, engine_env, system_specs
from service.manifest import ModelManifest, read_manifest

# Before its levels, each server answers this many clients twice each (batches of every size for the service).
WARM_UP_CLIENTS = 16


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(config: BenchConfig) -> BenchResult:
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    started = time.monotonic()
    machine = describe()
    manifest = read_manifest(config.package)
    with tempfile.TemporaryDirectory(prefix="bench-images-") as scratch:
        images = write_images(Path(scratch), config.image_count)
        progress(f"{len(images.bodies)} JPEGs: {images.describe()}")
        devices = [run_device(config, manifest, images, device) for device in config.devices]
    return BenchResult(
        quick=config.quick,
        started=started_at,
        seconds=round(time.monotonic() - started, 1),
        machine=machine,
        model={"checkpoint": str(config.checkpoint), "package": str(config.package), **_model_facts(manifest)},
        config=config.as_json() | {"images": images.describe()},
        devices=devices,
    )


def _model_facts(manifest: ModelManifest) -> dict[str, object]:
    return {
        "name": manifest.name,
        "version": manifest.version,
        "arch": manifest.arch,
        "canvas": list(manifest.canvas),
        "max_batch": manifest.max_batch,
    }


def run_device(config: BenchConfig, manifest: ModelManifest, images: ImageSet, device: str) -> DeviceResult:
    engine, raw = run_raw_engine(config, manifest, images, device)
    systems = [run_system(config, spec, images.directory, device) for spec in system_specs(config, manifest, device)]
    result = DeviceResult(
        device=device, engine=engine, service_max_batch=effective_batch(config, manifest), raw_engine=raw, systems=systems
    )
    result.ratios = compare.ratios(result)
    result.goals = compare.goals(result)
    return result


def run_raw_engine(
    config: BenchConfig, manifest: ModelManifest, images: ImageSet, device: str
) -> tuple[dict[str, object], list[RawResult]]:
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


def run_system(config: BenchConfig, spec: ServerSpec, images_dir: Path, device: str) -> SystemResult:
    result = SystemResult(name=spec.name, label=spec.label, settings=spec.settings())
    started = time.monotonic()
    try:
        with ServerProcess(spec) as server:
            result.runtime = server.info()
            plan = config.plan
            run_load_process(
                server.url, images_dir, min(WARM_UP_CLIENTS, max(plan.clients)), 2, plan.level_time_limit_s, plan.level_grace_s
            )
            for clients in config.plan.clients:
                result.levels.append(run_level(config, server, images_dir, clients))
                progress(f"[{device}] {spec.label}, {clients} clients: {_summary(result.levels[-1])}")
            result.peak_rss_mb = server.peak_rss_mb()
    except (ServerError, LoadError) as error:
        result.error = str(error)
        progress(f"[{device}] {spec.label}: not measured: {error}")
    result.seconds = round(time.monotonic() - started, 1)
    progress(f"[{device}] {spec.label}: {result.seconds} s in all")
    return result


def run_level(config: BenchConfig, server: ServerProcess, images_dir: Path, clients: int) -> Level:
    """One client count; the batch sizes are what /metrics counted between just before and just after it."""
    before = server.metrics()
    plan = config.plan
    load = run_load_process(server.url, images_dir, clients, plan.requests_per_client(clients), plan.level_time_limit_s, plan.level_grace_s)
    after = server.metrics()
    return Level(load=load, batch_sizes=batch_sizes(before, after) if before is not None and after is not None else None)


def _summary(level: Level) -> str:
    load = level.load
    p99 = load.latency_ms.p99 if load.latency_ms else None
    batch = f", mean batch {level.batch_sizes.mean}" if level.batch_sizes else ""
    early = "" if load.complete else f", stopped by the time limit after {load.completed} requests ({load.abandoned} abandoned)"
    return f"{load.images_per_s} images/s, p99 {p99} ms, status {load.status}{batch}{early}"
