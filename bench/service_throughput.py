"""The service at C concurrent clients vs the raw engine with the same batch policy and no HTTP.

    python -m bench.service_throughput [--package models/default/package] [--clients 16] [--requests 20]

The raw figure runs the same DynamicBatcher and ONNX Runtime engine in this
process, fed pre-letterboxed canvases by C concurrent submitters. The service
figure is real HTTP from a load generator in another process. The two run
alternately, twice each; medians are reported. Writes bench/results/service_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.images import write_images
from bench.load import run_load_process
from bench.machine import describe
from bench.raw_engine import canvases as letterboxed
from bench.servers import ServerProcess, ServerSpec
from service.batcher import BatchPolicy, DynamicBatcher
from service.engines.onnxruntime import OnnxRuntimeEngine
from service.manifest import read_manifest
from service.metrics import Metrics

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
TIME_LIMIT_S = 600.0


def raw_engine(engine: OnnxRuntimeEngine, canvases: list, policy: BatchPolicy, clients: int, per_client: int) -> dict:
    async def scenario() -> float:
        batcher = DynamicBatcher(engine, policy, Metrics())
        batcher.start()

        async def client(index: int) -> None:
            for n in range(per_client):
                await batcher.submit(canvases[(index * per_client + n) % len(canvases)], 0.5, 0.5, 120.0)

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
        await batcher.drain_and_stop()
        return elapsed

    elapsed = asyncio.run(scenario())
    return {"images_per_s": round(clients * per_client / elapsed, 2), "seconds": round(elapsed, 3)}


def service_spec(package: Path, env: dict[str, str]) -> ServerSpec:
    environment = {"DETECTOR_MODEL_DIR": str(package), "DETECTOR_HOST": "127.0.0.1", "DETECTOR_LOG_LEVEL": "warning", **env}
    return ServerSpec(name="service", label="service", module="service", env=environment, metrics_path="/metrics", port_env="DETECTOR_PORT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package", type=Path, default=REPO / "models" / "default" / "package")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20, help="per client")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    manifest = read_manifest(args.package)
    policy = BatchPolicy(args.max_batch_size, args.max_batch_wait_ms, max_queue=4 * args.clients)
    env = {
        "DETECTOR_MAX_BATCH_SIZE": str(args.max_batch_size),
        "DETECTOR_MAX_BATCH_WAIT_MS": str(args.max_batch_wait_ms),
        "DETECTOR_INTRA_OP_THREADS": str(args.threads),
        "DETECTOR_MAX_QUEUE": str(policy.max_queue),
    }
    with tempfile.TemporaryDirectory() as scratch:
        images_dir = Path(scratch)
        images = write_images(images_dir, 24)
        canvases = list(letterboxed(images.bodies, manifest.canvas))
        engine = OnnxRuntimeEngine(args.package, manifest, intra_op_threads=args.threads)
        raw_engine(engine, canvases, policy, args.clients, 2)  # warm-up
        with ServerProcess(service_spec(args.package, env)) as service:
            run_load_process(service.url, images_dir, args.clients, 2, TIME_LIMIT_S, 0.0)  # warm-up
            raw_runs, service_runs = [], []
            for _ in range(args.rounds):
                raw_runs.append(raw_engine(engine, canvases, policy, args.clients, args.requests))
                service_runs.append(run_load_process(service.url, images_dir, args.clients, args.requests, TIME_LIMIT_S, 0.0).model_dump())
                print(raw_runs[-1], service_runs[-1], flush=True)
            metrics = service.metrics() or ""
    # The median of an even count is a mean: rounded again so the table shows two decimals.
    raw = round(statistics.median(r["images_per_s"] for r in raw_runs), 2)
    served = round(statistics.median(r["images_per_s"] for r in service_runs), 2)
    batch_lines = [line for line in metrics.splitlines() if line.startswith("detector_batch_size_")]
    result = {
        "benchmark": "service_throughput",
        "clients": args.clients,
        "requests_per_client": args.requests,
        "policy": vars(policy),
        "threads": args.threads,
        "raw_engine_images_per_s": raw,
        "service_images_per_s": served,
        "ratio": round(served / raw, 3),
        "raw_runs": raw_runs,
        "service_runs": service_runs,
        "batch_size_histogram": batch_lines,
        "machine": describe(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "service_throughput.json").write_text(json.dumps(result, indent=2))
    last = service_runs[-1]["latency_ms"]
    table = [
        "| system | images/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
        f"| raw engine (batcher, no HTTP) | {raw} | | |",
        f"| service over HTTP | {served} | {last['p50']} | {last['p99']} |",
        f"| ratio (goal >= 0.85) | {result['ratio']} | | |",
    ]
    (RESULTS / "service_throughput.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
