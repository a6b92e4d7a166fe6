"""The benchmark's figures, as typed records; ``BenchResult.model_dump_json()`` is the JSON report.

Throughputs are images/s of successful (200) responses; latencies are milliseconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

REJECTED_STATUSES = ("429", "503")  # the service's "queue full, retry later"


class Latency(BaseModel):
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: list[float]) -> Latency | None:
        """Percentiles of latencies given in seconds, in ms; None for no samples."""
        if not seconds:
            return None
        ms = np.asarray(seconds) * 1000
        p50, p90, p99 = (round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99))
        return cls(p50=p50, p90=p90, p99=p99, max=round(float(ms.max()), 1))


class LoadResult(BaseModel):
    """One closed-loop level: ``clients`` clients, each sending ``requests_per_client`` requests one after another.

    ``completed`` counts the requests that got an answer (or a transport error) before the level's deadline.
    """

    clients: int
    requests_per_client: int
    completed: int
    seconds: float
    images_per_s: float
    latency_ms: Latency | None  # of the 200 responses
    status: dict[str, int]  # HTTP status -> count; "0" is a transport error (refused, reset, timed out)
    abandoned: int = 0  # requests unanswered at the level's deadline (not in ``completed``)
    complete: bool  # False when the level's time limit stopped the clients early

    @property
    def ok(self) -> int:
        return self.status.get("200", 0)

    @property
    def rejected(self) -> int:
        return sum(self.status.get(code, 0) for code in REJECTED_STATUSES)

    @property
    def errors(self) -> int:
        return self.completed - self.ok - self.rejected


class BatchSizes(BaseModel):
    """Graph runs during one level, from the service's ``detector_batch_size`` histogram."""

    batches: int
    mean: float | None
    counts: dict[str, int]  # size or size range ("5-6", as the histogram's buckets allow) -> batches


class Level(BaseModel):
    load: LoadResult
    batch_sizes: BatchSizes | None = None  # the service only


class SystemResult(BaseModel):
    """One server under load at every client count."""

    name: str  # service_batching, service_unbatched, naive
    label: str
    settings: dict[str, str]  # how the server was started (environment or command-line options)
    runtime: dict[str, Any] = {}  # what the server says it runs on
    levels: list[Level] = []
    peak_rss_mb: float | None = None  # the server process's VmHWM at the end of its run
    seconds: float | None = None  # wall time of its whole turn: start, warm-up, levels and stop
    error: str | None = None  # why it could not be measured

    def level(self, clients: int) -> Level | None:
        return next((level for level in self.levels if level.load.clients == clients), None)


class RawResult(BaseModel):
    """The engine alone at a fixed batch size: no HTTP, no decoding, canvases ready."""

    batch: int
    images: int
    seconds: float
    images_per_s: float
    batch_latency_ms: Latency  # the time of one graph run, which is every image's latency at this batch size


class Ratio(BaseModel):
    """``numerator`` against ``denominator`` at one client count: throughput ratio, and p99 latency ratio."""

    clients: int
    numerator: str
    denominator: str
    throughput: float | None
    p99: float | None = None


class Goal(BaseModel):
    goal: str
    measured: str
    met: bool | None  # None: not measured in this run


class DeviceResult(BaseModel):
    device: str  # cpu or gpu
    engine: dict[str, Any]  # the raw engine's description (provider, threads)
    service_max_batch: int  # the service's largest batch with batching on: the raw engine batch size it is held against
    raw_engine: list[RawResult]
    systems: list[SystemResult]
    ratios: list[Ratio] = []
    goals: list[Goal] = []

    def system(self, name: str) -> SystemResult | None:
        return next((system for system in self.systems if system.name == name), None)

    def raw(self, batch: int) -> RawResult | None:
        return next((raw for raw in self.raw_engine if raw.batch == batch), None)


class BenchResult(BaseModel):
    benchmark: str = "bench"
    quick: bool
    started: str  # ISO 8601, UTC
    seconds: float
    machine: dict[str, Any]
    model: dict[str, Any]
    config: dict[str, Any]
    devices: list[DeviceResult]
