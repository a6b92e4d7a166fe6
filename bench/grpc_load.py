"""The gRPC load generator: closed-loop clients calling ModelInfer (the v2 protocol) with one JPEG each.

    python -m bench.grpc_load --address 127.0.0.1:8001 --clients 16 --requests 20 --images DIR

prints one JSON object (``bench.figures.LoadResult``): images/s, latency percentiles (ms) of the calls answered OK,
and the calls by gRPC status name. It is what a Triton user runs: tritonclient's asyncio client, unchanged, all
clients on one channel (gRPC multiplexes calls over one HTTP/2 connection). Like bench.load it runs in a process
of its own; ``run_grpc_load_process`` starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from bench.figures import Latency, LoadResult
from bench.load import LoadError, add_load_options, parse_load_options
from bench.servers import REPO

MODEL = "default"  # the served model, whatever its name
CALL_TIMEOUT_S = 120.0


async def _call(client: triton.InferenceServerClient, image: bytes) -> tuple[str, float]:
    tensor = triton.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
    started = time.perf_counter()
    try:
        await client.infer(MODEL, [tensor], client_timeout=CALL_TIMEOUT_S)
    except InferenceServerException as error:
        return str(error.status()).removeprefix("StatusCode."), time.perf_counter() - started
    return "OK", time.perf_counter() - started


async def closed_loop(address: str, images: list[bytes], clients: int, per_client: int) -> tuple[list[tuple[str, float]], float]:
    """Each client sends its next call as soon as its last is answered, ``per_client`` calls; (status, seconds) of each,
    and the seconds all took. Client i's n-th call sends ``images[(i + n * clients) % len(images)]``, as bench.load does."""
    answers: list[tuple[str, float]] = []
    async with triton.InferenceServerClient(url=address) as client:

        async def one_client(index: int) -> None:
            for n in range(per_client):
                answers.append(await _call(client, images[(index + n * clients) % len(images)]))

        started = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        return answers, time.perf_counter() - started


def run_grpc_load(address: str, images: list[bytes], clients: int, per_client: int) -> LoadResult:
    answers, seconds = asyncio.run(closed_loop(address, images, clients, per_client))
    statuses = collections.Counter(status for status, _ in answers)
    return LoadResult(
        clients=clients,
        requests_per_client=per_client,
        completed=len(answers),
        seconds=round(seconds, 3),
        images_per_s=round(statuses["OK"] / seconds, 2),
        latency_ms=Latency.of([elapsed for status, elapsed in answers if status == "OK"]),
        status=dict(sorted(statuses.items())),
        complete=len(answers) == clients * per_client,
    )


def run_grpc_load_process(address: str, images_dir: Path, clients: int, per_client: int, timeout_s: float) -> LoadResult:
    """``run_grpc_load`` in a process of its own, so that the load does not share this interpreter."""
    command = [sys.executable, "-m", "bench.grpc_load", "--address", address, "--images", str(images_dir)]
    command += ["--clients", str(clients), "--requests", str(per_client)]
    done = subprocess.run(command, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise LoadError(f"the gRPC load generator exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return LoadResult.model_validate_json(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True, help="the server's gRPC host:port")
    add_load_options(parser)
    args, images = parse_load_options(parser)
    print(run_grpc_load(args.address, images, args.clients, args.requests).model_dump_json())


if __name__ == "__main__":
    main()
