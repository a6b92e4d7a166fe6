"""What the tests read from a real server: its /metrics, its detections compared, its /proc figures.

The load itself comes from bench/load.py (closed-loop clients, open-loop bursts) over bench/wire.py's raw HTTP/1.1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from bench.servers import process_stats

# /metrics


Families = dict[str, Metric]


def parse_families(text: str) -> Families:
    return {family.name: family for family in text_string_to_metric_families(text)}


def scrape(client: httpx.Client) -> Families:
    response = client.get("/metrics")
    response.raise_for_status()
    return parse_families(response.text)


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


def wait_for_fds(pid: int, at_most: int, timeout_s: float = 10.0) -> int:
    """The process's open descriptors once they are down to ``at_most``, or the count after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (fds := process_stats(pid).open_fds) > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return fds
