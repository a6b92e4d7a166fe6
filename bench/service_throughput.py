"""The service-throughput section: the service at C concurrent clients against the raw engine behind the same batcher.

The raw figure runs the service's own DynamicBatcher and engine in this process, fed ready canvases by C
concurrent submitters, with the service's batch policy and thresholds: what the service could at best answer.
The service figure is real HTTP from the load generator in another process. The two run alternately, round by
round, so that the machine's noise hits both alike; the medians are reported.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence

import numpy as np

from bench import compare, raw_engine
from bench.config import BenchConfig, progress
from bench.figures import Run, ServiceThroughputSection, ThroughputRound
from bench.images import ImageSet
from bench.load import LoadError, run_load_process
from bench.scrape import batch_sizes
from bench.servers import ServerError, ServerProcess, service_spec
from bench.systems import effective_batch, engine_env, service_env
from service.batcher import BatchPolicy, DynamicBatcher
from service.engines import Engine
from service.manifest import ModelManifest
from service.metrics import Metrics

TIME_LIMIT_S = 600.0  # a safety net only: a round takes seconds
WARM_UP_REQUESTS = 2  # per client, before the rounds, for each side


def batcher_throughput(
    engine: Engine, canvases: Sequence[np.ndarray], policy: BatchPolicy, clients: int, per_client: int, thresholds: tuple[float, float]
) -> float:
    """Images/s of ``clients`` concurrent submitters, each submitting ``per_client`` canvases one after another."""

    async def scenario() -> float:
        batcher = DynamicBatcher(engine, policy, Metrics().model("bench", "1"))
        batcher.start()

        async def client(index: int) -> None:
            for n in range(per_client):
                await batcher.submit(canvases[(index + n * clients) % len(canvases)], *thresholds, TIME_LIMIT_S)

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
        await batcher.drain_and_stop()
        return elapsed

    return round(clients * per_client / asyncio.run(scenario()), 2)


def measure(config: BenchConfig, manifest: ModelManifest, images: ImageSet, device: str, run: Run) -> ServiceThroughputSection:
    clients, per_client = config.throughput.clients, config.throughput.requests_per_client
    policy = BatchPolicy(effective_batch(config, manifest), config.max_batch_wait_ms, max_queue=max(config.max_queue, 4 * clients))
    engine = raw_engine.build_engine(config.package, manifest, engine_env(config, device))
    canvases = list(raw_engine.canvases(images.bodies, manifest.canvas))
    thresholds = (manifest.score_threshold, manifest.iou_threshold)
    section = ServiceThroughputSection(
        run=run,
        engine=engine.describe(),
        clients=clients,
        requests_per_client=per_client,
        policy={"max_batch_size": policy.max_batch_size, "max_batch_wait_ms": policy.max_batch_wait_ms, "max_queue": policy.max_queue},
        rounds=[],
    )
    spec = service_spec(service_env(config, device, policy.max_batch_size, policy.max_queue))
    try:
        batcher_throughput(engine, canvases, policy, clients, WARM_UP_REQUESTS, thresholds)
        with ServerProcess(spec) as server:
            run_load_process(server.port, images.directory, clients, WARM_UP_REQUESTS, TIME_LIMIT_S, 0.0)
            before = server.metrics()
            for _ in range(config.throughput.rounds):
                raw = batcher_throughput(engine, canvases, policy, clients, per_client, thresholds)
                served = run_load_process(server.port, images.directory, clients, per_client, TIME_LIMIT_S, 0.0)
                section.rounds.append(ThroughputRound(raw_images_per_s=raw, service=served))
                progress(f"[{device}] service-throughput at {clients} clients: raw engine {raw}, service {served.images_per_s} images/s")
            after = server.metrics()
    except (ServerError, LoadError) as error:
        section.error = str(error)
        progress(f"[{device}] service-throughput: not measured: {error}")
    else:
        section.batch_sizes = batch_sizes(before, after) if before is not None and after is not None else None
        # The median of an even count is a mean: rounded again to two decimals.
        section.raw_images_per_s = round(statistics.median(r.raw_images_per_s for r in section.rounds), 2)
        section.service_images_per_s = round(statistics.median(r.service.images_per_s for r in section.rounds), 2)
        section.ratio = round(section.service_images_per_s / section.raw_images_per_s, 3) if section.raw_images_per_s else None
    section.goals = compare.throughput_goals(section)
    return section
