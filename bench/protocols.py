"""The protocols section: one server at C clients over HTTP (``POST /detect``) and over gRPC (v2 ``ModelInfer``).

The same process serves both, on the same engine and batcher; the two load generators (bench.load and
bench.grpc_load, each in a process of its own) take turns round by round, so that the machine's noise hits both
alike; the medians are reported. One image a request in both: what differs is the protocol alone.
"""

from __future__ import annotations

import statistics
import subprocess

from bench.config import BenchConfig, progress
from bench.figures import ProtocolRound, ProtocolsSection, Run
from bench.grpc_load import run_grpc_load_process
from bench.images import ImageSet
from bench.load import LoadError, run_load_process
from bench.servers import HOST, ServerError, ServerProcess, free_port, service_spec
from bench.systems import effective_batch, service_env
from service.engines.base import EngineInfo
from service.manifest import ModelManifest

TIME_LIMIT_S = 600.0  # a safety net only: a round takes seconds
WARM_UP_REQUESTS = 2  # per client, on each protocol, before the rounds


def measure(config: BenchConfig, manifest: ModelManifest, images: ImageSet, device: str, run: Run) -> ProtocolsSection:
    clients, per_client = config.throughput.clients, config.throughput.requests_per_client
    section = ProtocolsSection(run=run, clients=clients, requests_per_client=per_client)
    grpc_port = free_port()
    env = service_env(config, device, effective_batch(config, manifest), max(config.max_queue, 4 * clients))
    try:
        with ServerProcess(service_spec(env | {"DETECTOR_GRPC_PORT": str(grpc_port)})) as server:
            address = f"{HOST}:{grpc_port}"
            run_load_process(server.port, images.directory, clients, WARM_UP_REQUESTS, TIME_LIMIT_S, 0.0)
            run_grpc_load_process(address, images.directory, clients, WARM_UP_REQUESTS, TIME_LIMIT_S)
            for _ in range(config.throughput.rounds):
                http = run_load_process(server.port, images.directory, clients, per_client, TIME_LIMIT_S, 0.0)
                grpc = run_grpc_load_process(address, images.directory, clients, per_client, TIME_LIMIT_S)
                section.rounds.append(ProtocolRound(http=http, grpc=grpc))
                progress(f"[{device}] protocols at {clients} clients: HTTP {http.images_per_s}, gRPC {grpc.images_per_s} images/s")
            section.engine = EngineInfo.model_validate(server.get("/v1/models/default").json()["runtime"])
    except (ServerError, LoadError, subprocess.TimeoutExpired) as error:
        section.error = str(error)
        progress(f"[{device}] protocols: not measured: {error}")
    else:
        summarize(section)
    return section


def summarize(section: ProtocolsSection) -> None:
    """The medians over the rounds (the median of an even count is a mean: rounded again)."""

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 2)

    section.http_images_per_s = median([r.http.images_per_s for r in section.rounds])
    section.grpc_images_per_s = median([r.grpc.images_per_s for r in section.rounds])
    section.http_p99_ms = median([r.http.latency_ms.p99 for r in section.rounds if r.http.latency_ms])
    section.grpc_p99_ms = median([r.grpc.latency_ms.p99 for r in section.rounds if r.grpc.latency_ms])
