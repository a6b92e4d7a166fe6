"""Load and fault tools for tests against a real server: a raw HTTP/1.1 client, /metrics and /proc readings.

The raw client opens one connection per request and sends ``Connection: close``,
so every request is a separate client as the server sees it, and a reply ends
where the connection does. On this two-core machine it costs a fraction of what
httpx does per request, so a burst is limited by the server, not by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

PROBLEM_JSON = "application/problem+json"
HEADER_END = b"\r\n\r\n"


# Raw HTTP/1.1


def detect_request(image: bytes, media_type: str, query: str = "", headers: dict[str, str] | None = None) -> bytes:
    """One complete ``POST /detect`` (head and body); the server closes the connection after its reply."""
    return request_head("POST", f"/detect{'?' + query if query else ''}", media_type, len(image), headers) + image


def media_type(image: bytes) -> str:
    """The Content-Type for the test's images: JPEG or PNG, told by the first bytes."""
    return "image/jpeg" if image.startswith(b"\xff\xd8") else "image/png"


def request_head(method: str, target: str, media_type: str | None = None, length: int = 0, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if media_type is not None:
        lines += [f"Content-Type: {media_type}", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True)
class Reply:
    """A parsed HTTP reply; ``latency_s`` runs from connecting to the last byte; header names are lower case."""

    status: int
    headers: dict[str, str]
    body: bytes
    latency_s: float = 0.0
    tag: str = ""  # what the sender wants to remember about the request

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def is_problem(self) -> bool:
        """An RFC 9457 problem of this reply's status."""
        if self.headers.get("content-type") != PROBLEM_JSON:
            return False
        body = self.json()
        return set(body) >= {"type", "title", "status", "detail"} and body["status"] == self.status


def parse_reply(raw: bytes, latency_s: float = 0.0, tag: str = "") -> Reply:
    head, separator, body = raw.partition(HEADER_END)
    if not separator:
        raise ValueError(f"an incomplete HTTP reply ({len(raw)} bytes): {raw[:200]!r}")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None and len(body) != int(length):
        raise ValueError(f"a truncated reply: {len(body)} of {length} body bytes")
    return Reply(int(status_line.split(" ", 2)[1]), headers, body, latency_s, tag)


async def send(port: int, request: bytes, tag: str = "", timeout_s: float = 60.0) -> Reply:
    """Sends one raw request on a new connection and reads the reply to the end of the connection."""
    started = time.monotonic()
    chunks = []
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
            with contextlib.suppress(ConnectionResetError):  # see read_reply
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        finally:
            writer.close()
    return parse_reply(b"".join(chunks), time.monotonic() - started, tag)


def connect(port: int, timeout_s: float = 30.0) -> socket.socket:
    """A blocking socket to the server, for clients that misbehave at the byte level."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each trickled piece leaves at once
    return sock


def read_reply(sock: socket.socket) -> Reply:
    """Reads a reply on a blocking socket until the server closes the connection."""
    started = time.monotonic()
    chunks = []
    # A server that closes with request bytes still unread ends the connection with a reset instead of
    # a FIN: the reply has arrived whole (parse_reply checks its length), only the end is abrupt.
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return parse_reply(b"".join(chunks), time.monotonic() - started)


# Load shapes


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


async def closed_loop(port: int, requests: list[bytes], clients: int, seconds: float) -> list[Reply]:
    """``clients`` senders, each sending the next request as soon as its last one is answered, for ``seconds``."""
    replies: list[Reply] = []
    stop = time.monotonic() + seconds

    async def client(offset: int) -> None:
        index = offset
        while time.monotonic() < stop:
            replies.append(await send(port, requests[index % len(requests)]))
            index += clients

    await asyncio.gather(*(client(offset) for offset in range(clients)))
    return replies


class BackgroundLoad:
    """Closed-loop clients on a thread of their own, from ``with`` until its end: keeps the server busy meanwhile."""

    def __init__(self, port: int, requests: list[bytes], clients: int) -> None:
        self.port, self.requests, self.clients = port, requests, clients
        self.replies: list[Reply] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="background-load")

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        if self._thread.is_alive():
            raise AssertionError("the background clients did not finish within 120 s of being stopped")

    async def _run(self) -> None:
        async def client(offset: int) -> None:
            index = offset
            while not self._stop.is_set():
                self.replies.append(await send(self.port, self.requests[index % len(self.requests)]))
                index += self.clients

        await asyncio.gather(*(client(offset) for offset in range(self.clients)))


# /metrics


Families = dict[str, Metric]


def scrape(client: httpx.Client) -> Families:
    response = client.get("/metrics")
    response.raise_for_status()
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def parse_families(text: str) -> Families:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: Families, family: str, sample: str | None = None, **labels: str) -> float:
    """The sum of family's samples named ``sample`` (default: the family's name) whose labels include ``labels``."""
    name = sample or family
    if family not in families:
        return 0.0  # a labelled counter has no samples until its first increment
    return sum(s.value for s in families[family].samples if s.name == name and labels.items() <= s.labels.items())


def graph_images(families: Families) -> float:
    """Images that went through the graph: the sum of every batch's size (warm-up included)."""
    return value(families, "detector_batch_size", "detector_batch_size_sum")


def statuses(families: Families, route: str = "/detect") -> dict[str, float]:
    """detector_requests_total by status for one route."""
    return {
        s.labels["status"]: s.value
        for s in families["detector_requests"].samples
        if s.name == "detector_requests_total" and s.labels["route"] == route
    }


def requests_in_flight(client: httpx.Client) -> int:
    """HTTP requests being handled, not counting the scrape that asks."""
    return int(value(scrape(client), "detector_requests_in_flight")) - 1


def wait_for_queue(client: httpx.Client, depth: int, timeout_s: float = 30.0) -> None:
    """Waits until at least ``depth`` requests wait for the model."""
    deadline = time.monotonic() + timeout_s
    while (queued := value(scrape(client), "detector_queue_depth")) < depth:
        if time.monotonic() > deadline:
            raise AssertionError(f"the queue held {queued:g} requests, never {depth}, within {timeout_s:g} s")
        time.sleep(0.02)


def wait_until_idle(client: httpx.Client, timeout_s: float = 30.0) -> None:
    """Waits until the server handles no request but the scrape; fails the test if it never does."""
    deadline = time.monotonic() + timeout_s
    while (in_flight := requests_in_flight(client)) != 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"{in_flight} request(s) still in flight after {timeout_s:g} s")
        time.sleep(0.05)


# Results


def same_detections(a: list[dict], b: list[dict]) -> bool:
    """Equal detections up to float tolerance (the same image in another batch)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x["label"] != y["label"] or abs(x["score"] - y["score"]) > 1e-5:
            return False
        if any(abs(x["box"][k] - y["box"][k]) > 1e-2 for k in ("x1", "y1", "x2", "y2")):
            return False
    return True


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("the median of nothing")
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def slope(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of y over x, for (x, y) points: a trend that no single noisy sample decides."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    if len(set(xs)) < 2:
        raise ValueError(f"a slope needs at least two distinct x values, got {list(xs)}")
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)


def percentile(values: list[float], percent: float) -> float:
    """The smallest value that ``percent`` % of the values do not exceed (nearest rank)."""
    if not values:
        raise ValueError("a percentile of nothing")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


# /proc


@dataclass(frozen=True)
class ProcessStats:
    rss_bytes: int
    open_fds: int
    threads: int


def process_stats(pid: int) -> ProcessStats:
    """Resident memory, open file descriptors and threads of a process, from /proc."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    rss_kib = int(status["VmRSS"].split()[0])
    return ProcessStats(rss_kib * 1024, len(list(Path(f"/proc/{pid}/fd").iterdir())), int(status["Threads"]))


def wait_for_fds(pid: int, at_most: int, timeout_s: float = 10.0) -> int:
    """The process's open descriptors once they are down to ``at_most``, or the count after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (fds := process_stats(pid).open_fds) > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return fds
