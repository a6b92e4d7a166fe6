"""A closed-loop HTTP load generator: C clients, each sending its requests one after another.

    python -m bench.load --url http://127.0.0.1:8000 --clients 16 --requests 20 --images DIR [--time-limit 30 --grace 15]

Prints one JSON object (``bench.figures.LoadResult``): images/s, latency
percentiles (ms) of the successful requests, status counts. It runs in its own
process so that it does not share the server's interpreter; ``run_load_process``
starts it from another program.
"""

from __future__ import annotations

import argparse
import collections
import math
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.figures import Latency, LoadResult

REPO = Path(__file__).resolve().parent.parent
MAX_TIMEOUT_S = 3600.0  # sockets refuse an infinite timeout
ABANDONED = -1  # a tally key, not an HTTP status: no answer by the level's deadline


class LoadError(RuntimeError):
    """The load generator could not run; the message carries its output."""


class _Tally:
    """Every client's outcomes, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok_latencies: list[float] = []
        self.statuses: collections.Counter[int] = collections.Counter()

    def add(self, status: int, seconds: float) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status == 200:
                self.ok_latencies.append(seconds)


@dataclass
class _Clock:
    """The level's time limit (no new request after it) and deadline (requests still unanswered are abandoned)."""

    time_limit_s: float
    grace_s: float
    started: float = 0.0

    def start(self) -> None:
        self.started = time.perf_counter()

    def may_send(self) -> bool:
        return time.perf_counter() < self.started + self.time_limit_s

    def past_deadline(self) -> bool:
        return time.perf_counter() >= self.started + self.time_limit_s + self.grace_s

    def timeout(self) -> float:
        remaining = self.started + self.time_limit_s + self.grace_s - time.perf_counter()
        return min(max(remaining, 0.1), MAX_TIMEOUT_S)


def _client(url: str, bodies: list[bytes], tally: _Tally, gate: threading.Barrier, clock: _Clock) -> None:
    """Sends ``bodies`` one after another, each once its previous answer has come, until the time limit."""
    with httpx.Client(base_url=url, trust_env=False) as http:  # loopback: no proxy from the environment
        gate.wait()
        for body in bodies:
            if not clock.may_send():
                return
            sent = time.perf_counter()
            try:
                status = http.post("/detect", content=body, headers={"Content-Type": "image/jpeg"}, timeout=clock.timeout()).status_code
            except httpx.TimeoutException:
                status = ABANDONED if clock.past_deadline() else 0
            except httpx.HTTPError:
                status = 0
            tally.add(status, time.perf_counter() - sent)


def run_load(
    url: str, images: list[bytes], clients: int, requests_per_client: int, time_limit_s: float = float("inf"), grace_s: float = 0.0
) -> LoadResult:
    """Client i sends images i*R, i*R+1, ... (cycling through ``images``): a fixed set of bodies per level.

    The clock starts once every client is connected and waiting; no request starts after ``time_limit_s``, and
    those still unanswered ``grace_s`` later are abandoned (status 0).
    """
    tally = _Tally()
    clock = _Clock(time_limit_s, grace_s)
    gate = threading.Barrier(clients + 1, action=clock.start)  # the action runs before any client is let through
    threads = [
        threading.Thread(
            target=_client,
            args=(url, [images[(i * requests_per_client + n) % len(images)] for n in range(requests_per_client)], tally, gate, clock),
        )
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    gate.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - clock.started
    abandoned = tally.statuses.pop(ABANDONED, 0)
    completed = sum(tally.statuses.values())
    return LoadResult(
        clients=clients,
        requests_per_client=requests_per_client,
        completed=completed,
        seconds=round(elapsed, 3),
        images_per_s=round(tally.statuses[200] / elapsed, 2),
        latency_ms=Latency.of(tally.ok_latencies),
        status={str(k): v for k, v in sorted(tally.statuses.items())},
        abandoned=abandoned,
        complete=completed == clients * requests_per_client,
    )


def run_load_process(url: str, images_dir: Path, clients: int, requests_per_client: int, time_limit_s: float, grace_s: float) -> LoadResult:
    """``run_load`` in a process of its own (``python -m bench.load``), so that the load does not share this interpreter."""
    command = [sys.executable, "-m", "bench.load", "--url", url, "--images", str(images_dir)]
    command += [
        "--clients",
        str(clients),
        "--requests",
        str(requests_per_client),
        "--time-limit",
        str(time_limit_s),
        "--grace",
        str(grace_s),
    ]
    timeout = None if math.isinf(time_limit_s + grace_s) else time_limit_s + grace_s + 120  # + start-up and connecting
    done = subprocess.run(command, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise LoadError(f"the load generator exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return LoadResult.model_validate_json(done.stdout)


def read_images(directory: Path) -> list[bytes]:
    paths = sorted(directory.glob("*.jpg"))
    if not paths:
        raise LoadError(f"{directory}: no .jpg files to send")
    return [path.read_bytes() for path in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20, help="per client")
    parser.add_argument("--images", type=Path, required=True, help="directory of .jpg files to send")
    parser.add_argument("--time-limit", type=float, default=float("inf"), help="seconds; clients send nothing new after it")
    parser.add_argument("--grace", type=float, default=0.0, help="seconds after the time limit; unanswered requests are then abandoned")
    args = parser.parse_args()
    if args.clients < 1 or args.requests < 1:
        parser.error(f"--clients and --requests should be at least 1, got {args.clients} and {args.requests}")
    try:
        images = read_images(args.images)
    except LoadError as error:
        parser.error(str(error))
    print(run_load(args.url, images, args.clients, args.requests, args.time_limit, args.grace).model_dump_json())


if __name__ == "__main__":
    main()
