"""The load generator: closed-loop clients (the benchmark's levels, the tests' steady loads) and open-loop bursts.

    python -m bench.load --port 8000 --clients 16 --requests 20 --images DIR [--time-limit 30 --grace 15]

runs one benchmark level and prints one JSON object (``bench.figures.LoadResult``): images/s, latency
percentiles (ms) of the successful requests, status counts. It runs in its own process so that it does not
share the server's interpreter or the benchmark's; ``run_load_process`` starts it from another program.
Every request goes on a connection of its own (bench/wire.py).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.figures import Latency, LoadResult
from bench.servers import REPO
from bench.wire import Reply, attempt, detect_request, send

MAX_TIMEOUT_S = 3600.0  # a level without a time limit still gives up on a request after an hour
TEST_TIMEOUT_S = 60.0


class LoadError(RuntimeError):
    """The load generator could not run; the message carries its output."""


def for_seconds(seconds: float) -> Callable[[], bool]:
    """A ``keep_sending`` that holds for ``seconds`` from now."""
    stop = time.monotonic() + seconds
    return lambda: time.monotonic() < stop


async def closed_loop(
    port: int,
    requests: Sequence[bytes],
    clients: int,
    keep_sending: Callable[[], bool],
    per_client: int | None = None,
    timeout_s: Callable[[], float] = lambda: TEST_TIMEOUT_S,
) -> list[Reply]:
    """``clients`` clients, each sending its next request as soon as its last is answered, while ``keep_sending()``
    holds and at most ``per_client`` each; every reply, those of status NO_REPLY included.

    Client i's n-th request is ``requests[(i + n * clients) % len(requests)]``: with ``per_client`` R the clients
    send requests 0 to C*R - 1 (cycling) between them, the same set whatever the order of the answers.
    """
    replies: list[Reply] = []

    async def client(index: int) -> None:
        sent = 0
        while keep_sending() and (per_client is None or sent < per_client):
            replies.append(await attempt(port, requests[(index + sent * clients) % len(requests)], timeout_s=timeout_s()))
            sent += 1

    await asyncio.gather(*(client(index) for index in range(clients)))
    return replies


class BackgroundLoad:
    """Closed-loop clients on a thread of their own, from ``with`` until its end: keeps the server busy meanwhile."""

    def __init__(self, port: int, requests: list[bytes], clients: int) -> None:
        self.replies: list[Reply] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port, requests, clients), name="background-load")

    def _run(self, port: int, requests: list[bytes], clients: int) -> None:
        self.replies = asyncio.run(closed_loop(port, requests, clients, keep_sending=lambda: not self._stop.is_set()))

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        if self._thread.is_alive():
            raise AssertionError("the background clients did not finish within 120 s of being stopped")


@dataclass
class Burst:
    """An open-loop burst: request i leaves at ``i / rate`` seconds, whether or not earlier ones were answered."""

    replies: list[Reply] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    sent_over_s: float = 0.0  # from the first request's departure to the last's

    @property
    def offered_rate(self) -> float:
        return len(self.replies + self.errors) / self.sent_over_s if self.sent_over_s else 0.0


async def open_loop(port: int, requests: list[tuple[bytes, str]], rate: float) -> Burst:
    """Sends ``(request, tag)`` pairs at ``rate`` per second, each from its own connection."""
    burst = Burst()
    start = time.monotonic()
    departures: list[float] = []

    async def one(index: int, request: bytes, tag: str) -> None:
        await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))
        departures.append(time.monotonic())
        try:
            burst.replies.append(await send(port, request, tag))
        except (OSError, ValueError, TimeoutError) as error:
            burst.errors.append(f"{tag}: {type(error).__name__}: {error}")

    await asyncio.gather(*(one(i, request, tag) for i, (request, tag) in enumerate(requests)))
    burst.sent_over_s = max(departures) - min(departures)
    return burst


@dataclass
class _Clock:
    """A level's time limit (no new request after it) and deadline (requests still unanswered are abandoned)."""

    time_limit_s: float
    grace_s: float
    started: float = field(default_factory=time.monotonic)

    def may_send(self) -> bool:
        return time.monotonic() < self.started + self.time_limit_s

    def timeout(self) -> float:
        """What is left until the deadline: a request that times out is unanswered at the deadline."""
        remaining = self.started + self.time_limit_s + self.grace_s - time.monotonic()
        return min(max(remaining, 0.1), MAX_TIMEOUT_S)


def run_load(
    port: int, images: list[bytes], clients: int, requests_per_client: int, time_limit_s: float = math.inf, grace_s: float = 0.0
) -> LoadResult:
    """One benchmark level: ``clients`` closed-loop clients send ``requests_per_client`` JPEGs each to ``POST /detect``.

    No request starts after ``time_limit_s``; those still unanswered ``grace_s`` later are abandoned.
    """
    requests = [detect_request(image, "image/jpeg") for image in images]
    clock = _Clock(time_limit_s, grace_s)
    replies = asyncio.run(closed_loop(port, requests, clients, clock.may_send, requests_per_client, clock.timeout))
    elapsed = time.monotonic() - clock.started
    abandoned = sum(1 for reply in replies if isinstance(reply.error, TimeoutError))
    statuses = collections.Counter(reply.status for reply in replies if not isinstance(reply.error, TimeoutError))
    return LoadResult(
        clients=clients,
        requests_per_client=requests_per_client,
        completed=sum(statuses.values()),
        seconds=round(elapsed, 3),
        images_per_s=round(statuses[200] / elapsed, 2),
        latency_ms=Latency.of([reply.latency_s for reply in replies if reply.status == 200]),
        status={str(status): count for status, count in sorted(statuses.items())},
        abandoned=abandoned,
        complete=sum(statuses.values()) == clients * requests_per_client,
    )


def run_load_process(
    port: int, images_dir: Path, clients: int, requests_per_client: int, time_limit_s: float, grace_s: float
) -> LoadResult:
    """``run_load`` in a process of its own (``python -m bench.load``), so that the load does not share this interpreter."""
    command = [sys.executable, "-m", "bench.load", "--port", str(port), "--images", str(images_dir), "--clients", str(clients)]
    command += ["--requests", str(requests_per_client), "--time-limit", str(time_limit_s), "--grace", str(grace_s)]
    timeout = None if math.isinf(time_limit_s + grace_s) else time_limit_s + grace_s + 120  # + start-up
    done = subprocess.run(command, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise LoadError(f"the load generator exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return LoadResult.model_validate_json(done.stdout)


def read_images(directory: Path) -> list[bytes]:
    paths = sorted(directory.glob("*.jpg"))
    if not paths:
        raise LoadError(f"{directory}: no .jpg files to send")
    return [path.read_bytes() for path in paths]


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """The options every load generator takes: clients, requests per client, and the images to send."""
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20, help="per client")
    parser.add_argument("--images", type=Path, required=True, help="directory of .jpg files to send")


def parse_load_options(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[bytes]]:
    """The parsed command line and the images it names; a bad count or folder exits through ``parser.error``."""
    args = parser.parse_args()
    if args.clients < 1 or args.requests < 1:
        parser.error(f"--clients and --requests should be at least 1, got {args.clients} and {args.requests}")
    try:
        return args, read_images(args.images)
    except LoadError as error:
        parser.error(str(error))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="the server's port on 127.0.0.1")
    add_load_options(parser)
    parser.add_argument("--time-limit", type=float, default=math.inf, help="seconds; clients send nothing new after it")
    parser.add_argument("--grace", type=float, default=0.0, help="seconds after the time limit; unanswered requests are then abandoned")
    args, images = parse_load_options(parser)
    print(run_load(args.port, images, args.clients, args.requests, args.time_limit, args.grace).model_dump_json())


if __name__ == "__main__":
    main()
