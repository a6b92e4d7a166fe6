"""Overload: a burst at ten times the measured capacity against a real server with a small queue.

The burst runs once for the module (it is the expensive part); each test checks
one promise the server makes under overload, on that burst's replies and on the
readings taken during and after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.load import Burst, closed_loop, for_seconds, open_loop
from bench.servers import ServerProcess
from bench.wire import Reply, connect, detect_request, read_reply, request_head, send
from tests.service.helpers import serving
from tests.service.readings import Families, median, parse_families, percentile, same_detections, scrape, statuses, value, wait_until_idle

MAX_QUEUE = 8
REQUEST_TIMEOUT_S = 4.0
SHORT_DEADLINE_S = 0.5
BURST_FACTOR = 10
BURST_S = 3.0
CAPACITY_CLIENTS = 8  # enough to fill batches of 8: the capacity is the batcher's, not one client's
QUERY = "score_threshold=0.1"  # low enough that every scene has detections to compare
# How long after its deadline a reply may come: the time to connect, parse and decode on two busy cores.
# A server that sheds load early answers this whole burst within 0.3 s of sending; generous on a shared machine.
DEADLINE_SLACK_S = 1.0
RSS_BUDGET_BYTES_PER_REQUEST = 16 * 1024  # what the burst may leave behind in resident memory, per request (see its test)
# The first burst at ten times the load the server has seen raises its high-water mark once (buffers of hundreds of
# connections, the allocator's arenas of the decode threads): seen up to 21.5 MiB in a CI run, whatever the reply count.
RSS_BURST_ALLOWANCE_BYTES = 48 * 2**20


@dataclass(frozen=True)
class Overload:
    capacity: float  # images/s with a few closed-loop clients
    burst: Burst
    queue_depths: list[float]  # detector_queue_depth sampled during the burst
    rss_before: int
    rss_after: int
    scenes: dict[str, bytes]
    alone: dict[str, list[dict]]  # each scene's detections when sent alone to the idle server
    client: httpx.Client


@pytest.fixture(scope="module")
def overload(small_package: Path, scene_images: list[bytes]) -> Iterator[Overload]:
    with serving(small_package, DETECTOR_MAX_QUEUE=str(MAX_QUEUE), DETECTOR_REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S)) as server:
        client = server.http
        scenes = _jpeg_scenes(scene_images)
        alone = {tag: _detect_alone(client, image) for tag, image in scenes.items()}
        capacity = _measure_capacity(server.port, scenes)
        wait_until_idle(client)
        rss_before = server.stats().rss_bytes
        burst, depths = asyncio.run(_burst_while_sampling(server.port, scenes, BURST_FACTOR * capacity))
        wait_until_idle(client)
        rss_after = server.stats().rss_bytes
        print(_summary(capacity, burst, depths, rss_before, rss_after))
        yield Overload(capacity, burst, depths, rss_before, rss_after, scenes, alone, client)


def _jpeg_scenes(scene_images: list[bytes]) -> dict[str, bytes]:
    # The JPEG scenes are a fifth of the PNGs' size: the burst's cost stays on the server's side.
    return {f"scene{index}": image for index, image in enumerate(scene_images) if image.startswith(b"\xff\xd8")}


def _detect_alone(client: httpx.Client, image: bytes) -> list[dict]:
    response = client.post(f"/detect?{QUERY}", content=image, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    detections = list(response.json()["detections"])
    assert detections, "a scene without detections would make the comparison empty"
    return detections


def _measure_capacity(port: int, scenes: dict[str, bytes]) -> float:
    requests = [detect_request(image, "image/jpeg", QUERY) for image in scenes.values()]
    started = time.monotonic()
    replies = asyncio.run(closed_loop(port, requests, CAPACITY_CLIENTS, for_seconds(2.5)))
    elapsed = time.monotonic() - started
    assert [r.status for r in replies] == [200] * len(replies), Counter(r.status for r in replies)
    return len(replies) / elapsed


def _burst_requests(scenes: dict[str, bytes], count: int) -> list[tuple[bytes, str]]:
    """Requests tagged ``scene:deadline``; one in five has a short deadline, by header or by query parameter."""
    requests = []
    for index in range(count):
        scene = list(scenes)[index % len(scenes)]
        image = scenes[scene]
        if index % 10 == 3:
            request = detect_request(image, "image/jpeg", QUERY, {"X-Request-Timeout": str(SHORT_DEADLINE_S)})
        elif index % 10 == 8:
            request = detect_request(image, "image/jpeg", f"{QUERY}&timeout_ms={int(SHORT_DEADLINE_S * 1000)}")
        else:
            request = detect_request(image, "image/jpeg", QUERY)
        requests.append((request, f"{scene}:{'short' if index % 5 == 3 else 'default'}"))
    return requests


async def _burst_while_sampling(port: int, scenes: dict[str, bytes], rate: float) -> tuple[Burst, list[float]]:
    requests = _burst_requests(scenes, int(rate * BURST_S))
    depths: list[float] = []
    sampling = asyncio.create_task(_sample_queue_depth(port, depths))
    try:
        burst = await open_loop(port, requests, rate)
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
    return burst, depths


async def _sample_queue_depth(port: int, depths: list[float]) -> None:
    while True:
        reply = await send(port, request_head("GET", "/metrics"))
        if reply.status == 200:  # a scrape may be refused too; the samples that come are what counts
            depths.append(value(parse_families(reply.body.decode()), "detector_queue_depth"))
        await asyncio.sleep(0.05)


def _summary(capacity: float, burst: Burst, depths: list[float], rss_before: int, rss_after: int) -> str:
    kinds = Counter(f"{r.status} {r.headers.get('content-type', '')}" for r in burst.replies)
    latencies = {
        status: f"median {median(times):.3f} s, 90th percentile {percentile(times, 90):.3f} s"
        for status in sorted({r.status for r in burst.replies})
        for times in [[r.latency_s for r in burst.replies if r.status == status]]
    }
    return (
        f"\ncapacity {capacity:.1f}/s; burst offered {burst.offered_rate:.1f}/s over {burst.sent_over_s:.2f} s; "
        f"replies {dict(kinds)}; {latencies}; slowest {max(r.latency_s for r in burst.replies):.2f} s; "
        f"transport errors {len(burst.errors)}; {len(depths)} queue samples, deepest {max(depths, default=None)}; "
        f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB"
    )


def _replies(overload: Overload, keep: Callable[[int], bool]) -> list[Reply]:
    return [r for r in overload.burst.replies if keep(r.status)]


def test_the_burst_overloads_the_server_and_nothing_fails_with_a_server_error(overload: Overload) -> None:
    burst = overload.burst
    assert burst.errors == [], burst.errors[:5]
    assert burst.offered_rate > BURST_FACTOR / 2 * overload.capacity, "the burst fell short of overloading the server"
    assert {r.status for r in burst.replies} <= {200, 503, 504}, Counter(r.status for r in burst.replies)
    assert len(_replies(overload, lambda s: s == 503)) > len(burst.replies) / 2, "most of a 10x burst should be refused"
    assert "500" not in statuses(scrape(overload.client))


def test_every_refusal_is_a_problem_with_retry_after(overload: Overload) -> None:
    refused = _replies(overload, lambda s: s == 503)
    bare = [r for r in refused if not r.is_problem]
    assert not bare, f"{len(bare)} of {len(refused)} 503s are not problems: {bare[0].headers}, {bare[0].body!r}"
    for reply in refused:
        assert reply.json()["type"] == "/problems/queue-full", reply.body
        assert int(reply.headers["retry-after"]) >= 1, reply.headers


def test_refusals_come_much_faster_than_answers(overload: Overload) -> None:
    refused = percentile([r.latency_s for r in _replies(overload, lambda s: s == 503)], 90)
    answered = median(r.latency_s for r in _replies(overload, lambda s: s == 200))
    # Generous: a refusal needs no inference, so nine in ten should come in a third of an answer's time.
    assert refused < answered / 3, f"503s took {refused:.3f} s (90th percentile), 200s {answered:.3f} s (median)"


def test_accepted_requests_get_the_detections_of_their_image_alone(overload: Overload) -> None:
    answered = _replies(overload, lambda s: s == 200)
    # The model kept working through the burst: a good share of its capacity went to accepted requests.
    assert len(answered) >= overload.capacity * BURST_S / 4, f"only {len(answered)} answered"
    for reply in answered:
        scene = reply.tag.split(":")[0]
        assert same_detections(reply.json()["detections"], overload.alone[scene]), (scene, reply.json())


def test_only_requests_with_a_short_deadline_expire(overload: Overload) -> None:
    short = [r for r in overload.burst.replies if r.tag.endswith(":short")]
    assert short and {r.status for r in short} <= {200, 503, 504}, Counter(r.status for r in short)
    for reply in _replies(overload, lambda s: s == 504):
        assert reply.tag.endswith(":short"), (reply.tag, reply.body)
        assert reply.is_problem and reply.json()["type"] == "/problems/deadline-exceeded", reply.body


def test_no_reply_comes_long_after_its_deadline(overload: Overload) -> None:
    late = [
        (r.tag, r.status, round(r.latency_s, 2))
        for r in overload.burst.replies
        if r.latency_s > (SHORT_DEADLINE_S if r.tag.endswith(":short") else REQUEST_TIMEOUT_S) + DEADLINE_SLACK_S
    ]
    assert not late, f"{len(late)} replies came more than {DEADLINE_SLACK_S} s after their deadline: {late[:5]}"


def test_the_queue_never_exceeds_its_bound(overload: Overload) -> None:
    depths = overload.queue_depths
    assert len(depths) >= 3, "too few samples of the queue during the burst"
    assert max(depths) <= MAX_QUEUE, depths
    assert max(depths) > 0, "every sample saw an empty queue: none was taken under load"


def test_memory_stays_bounded(overload: Overload) -> None:
    # A burst's requests hold at most the queue's few canvases at once, and nothing once answered or refused: beyond the
    # one-off high-water allowance, what stays is a leak's share. Measured: 3 to 4 MiB over 835 and 938 replies, and
    # 21.5 MiB over 1294 in a CI run; a leak of a decoded scene (about 250 KiB) per request would be over 300 MiB here.
    grown = overload.rss_after - overload.rss_before
    replies = len(overload.burst.replies)
    budget = RSS_BURST_ALLOWANCE_BYTES + RSS_BUDGET_BYTES_PER_REQUEST * replies
    assert grown <= budget, f"resident memory grew {grown / 2**20:.1f} MiB over {replies} requests (budget {budget / 2**20:.0f} MiB)"


def test_the_server_is_ready_and_correct_after_the_burst(overload: Overload) -> None:
    client = overload.client
    assert client.get("/health/ready").status_code == 200
    for scene, detections in overload.alone.items():
        assert same_detections(_detect_alone(client, overload.scenes[scene]), detections), scene


# Overload by connections rather than by requests


def test_connections_past_the_limit_are_refused_with_a_counted_problem(
    start_server: Callable[..., ServerProcess], scene_images: list[bytes]
) -> None:
    server = start_server(DETECTOR_MAX_CONNECTIONS="4")
    server.wait_ready().close()
    idle = [connect(server.port) for _ in range(4)]  # open, nothing sent: each holds a connection slot
    try:
        with connect(server.port) as sock:
            sock.sendall(detect_request(scene_images[0], "image/jpeg"))
            reply = read_reply(sock)
    finally:
        for sock in idle:
            sock.close()
    assert reply.status == 503, reply
    assert reply.is_problem, (reply.headers, reply.body)
    assert int(reply.headers["retry-after"]) >= 1, reply.headers
    families, refused_scrapes = _scrape_once_admitted(server.url)
    assert value(families, "detector_rejected", "detector_rejected_total") == 1 + refused_scrapes, "every refusal should be counted"


def _scrape_once_admitted(url: str) -> tuple[Families, int]:
    """/metrics once a connection slot is free again (the closed sockets take a moment to go); and the refusals till then."""
    refused = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        while (response := client.get("/metrics")).status_code == 503:
            refused += 1
            time.sleep(0.05)
        response.raise_for_status()
        return parse_families(response.text), refused
