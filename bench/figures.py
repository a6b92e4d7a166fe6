"""The benchmark's figures, as typed records; ``BenchResult.model_dump_json()`` is the JSON report.

Throughputs are images/s of successful (200) responses; latencies are milliseconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel

from service.engines.base import EngineInfo

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


class Run(BaseModel):
    """When, where and how a section was measured. A report merged from several runs keeps each section's own."""

    started: str  # ISO 8601, UTC
    seconds: float
    quick: bool  # a check that everything works, too short for figures to publish
    command: str
    machine: dict[str, Any]
    config: dict[str, Any]  # the run's options and its images
    others_cpu_share: float | None = None  # of the cores' time during the run, taken by other processes (bench.machine.OtherWork)


class SystemsSection(BaseModel):
    """The raw engine at fixed batch sizes, and each server under load at every client count."""

    run: Run
    engine: EngineInfo  # the raw engine's
    service_max_batch: int  # the service's largest batch with batching on: the raw engine batch size it is held against
    raw_engine: list[RawResult]
    systems: list[SystemResult]
    ratios: list[Ratio] = []
    goals: list[Goal] = []

    def system(self, name: str) -> SystemResult | None:
        return next((system for system in self.systems if system.name == name), None)

    def raw(self, batch: int) -> RawResult | None:
        return next((raw for raw in self.raw_engine if raw.batch == batch), None)


class SpeedRow(BaseModel):
    """Milliseconds per image at one batch size: medians over the rounds."""

    batch: int
    eager_ms_per_image: float
    graph_ms_per_image: float
    ratio: float  # graph / eager


class ExportSpeedSection(BaseModel):
    """The exported graph (the raw engine) against the eager torchvision model it came from, in one process, on the
    same canvases, alternating batch by batch so that the machine's noise hits both alike."""

    run: Run
    engine: EngineInfo
    eager: dict[str, Any]  # torch's version, device and threads
    rounds: int
    rows: list[SpeedRow]
    goals: list[Goal] = []


class ThroughputRound(BaseModel):
    raw_images_per_s: float  # the raw engine behind the service's batcher, no HTTP
    service: LoadResult


class ServiceThroughputSection(BaseModel):
    """The service over HTTP against the same engine behind the same batcher without HTTP, at one client count,
    in alternating rounds."""

    run: Run
    engine: EngineInfo
    clients: int
    requests_per_client: int
    policy: dict[str, int | float]  # the batcher's max_batch_size, max_batch_wait_ms and max_queue, in both
    rounds: list[ThroughputRound] = []
    raw_images_per_s: float | None = None  # medians over the rounds
    service_images_per_s: float | None = None
    ratio: float | None = None  # service / raw
    batch_sizes: BatchSizes | None = None  # the service's graph runs over the measured rounds
    error: str | None = None  # why it could not be measured
    goals: list[Goal] = []


class Accuracy(BaseModel):
    """COCO mAP on the held-out set (model_export.evaluate), detections at score >= the set's threshold."""

    map: float  # mAP@[.5:.95]
    map50: float
    detections: int


class EvalSet(BaseModel):
    """The held-out synthetic scenes every configuration and the eager checkpoint are scored on."""

    seed: int
    images: int
    score_threshold: float
    unscored: str | None = None  # why no mAP was computed


class PrecisionRow(BaseModel):
    """One engine and precision: the raw graph, the service, the accuracy, and ratios against the baseline's."""

    name: str  # onnxruntime-f32, openvino-int8, ..., auto
    label: str
    settings: dict[str, str]  # the DETECTOR_* variables that chose it; none for auto (the service's defaults)
    engine: EngineInfo | None = None  # what the raw engine runs
    skipped: str | None = None  # why this machine cannot run it
    raw: list[RawResult] = []  # the graph alone, by batch size, alternating with the other configurations
    service: SystemResult | None = None  # its runtime is the service's own description (/v1/models' runtime)
    accuracy: Accuracy | None = None
    throughput_ratio: float | None = None  # the service's images/s at the section's ratio_clients, over the baseline's
    latency_ratio: float | None = None  # the raw graph's batch-1 p50, over the baseline's

    def raw_at(self, batch: int) -> RawResult | None:
        return next((raw for raw in self.raw if raw.batch == batch), None)

    def images_per_s(self, clients: int) -> float | None:
        level = self.service.level(clients) if self.service is not None else None
        return level.load.images_per_s if level is not None else None


class PrecisionsSection(BaseModel):
    """Each engine and precision this machine can run, side by side in one run, with the eager checkpoint's mAP on
    the same held-out scenes. Ratios are against ``baseline`` (ONNX Runtime f32 on this device)."""

    run: Run
    baseline: str
    ratio_clients: int
    rounds: int  # of the raw graph's alternation
    eval_set: EvalSet
    eager: Accuracy | None = None  # the checkpoint the package was exported from, in torch
    rows: list[PrecisionRow]
    goals: list[Goal] = []

    def row(self, name: str) -> PrecisionRow | None:
        return next((row for row in self.rows if row.name == name), None)


class ProtocolRound(BaseModel):
    http: LoadResult  # POST /detect (bench.load); status by HTTP code
    grpc: LoadResult  # ModelInfer (bench.grpc_load); status by gRPC code name


class ProtocolsSection(BaseModel):
    """The same service at one client count over HTTP and over gRPC, one image a request, alternating round by round."""

    run: Run
    engine: EngineInfo | None = None  # what the service ran (/v1/models' runtime)
    clients: int
    requests_per_client: int
    rounds: list[ProtocolRound] = []
    # Medians over the rounds.
    http_images_per_s: float | None = None
    grpc_images_per_s: float | None = None
    http_p99_ms: float | None = None
    grpc_p99_ms: float | None = None
    error: str | None = None  # why it could not be measured


class TrainStepRow(BaseModel):
    box_batch: int  # RoIs sampled per image for the box head
    torchvision_s: float  # seconds per iteration, torchvision's RoIAlign
    bags_s: float  # seconds per iteration, model_export.roi_align_bags (what `model_export train` uses)
    ratio: float  # bags / torchvision


class TrainStepSection(BaseModel):
    """A training iteration of the package's architecture, from the same weights on the same batch, with torchvision's
    RoIAlign and with the embedding-bag one, alternating step by step."""

    run: Run
    arch: str
    canvas: tuple[int, int]
    batch_size: int
    rounds: int
    torch: dict[str, Any]  # torch's version, device and threads
    rows: list[TrainStepRow]
    goals: list[Goal] = []


DEVICE_ORDER = ["cpu", "gpu"]
# --only's names -> DeviceResult's fields, in the order they run and are reported.
SECTIONS = {
    "systems": "systems",
    "service-throughput": "service_throughput",
    "export-speed": "export_speed",
    "precisions": "precisions",
    "protocols": "protocols",
    "train-step": "train_step",
}
Section = SystemsSection | ServiceThroughputSection | ExportSpeedSection | PrecisionsSection | ProtocolsSection | TrainStepSection


class DeviceResult(BaseModel):
    """One device's sections; those not measured are None."""

    device: str  # cpu or gpu
    systems: SystemsSection | None = None
    service_throughput: ServiceThroughputSection | None = None
    export_speed: ExportSpeedSection | None = None
    precisions: PrecisionsSection | None = None
    protocols: ProtocolsSection | None = None
    train_step: TrainStepSection | None = None

    def sections(self) -> dict[str, Section]:
        """The measured sections by option name."""
        found = {option: getattr(self, name) for option, name in SECTIONS.items()}
        return {option: section for option, section in found.items() if section is not None}


class BenchResult(BaseModel):
    benchmark: str = "bench"
    model: dict[str, Any]
    devices: list[DeviceResult]

    def runs(self) -> list[Run]:
        """Every run that measured a section of this report, oldest first."""
        runs = {section.run.started: section.run for device in self.devices for section in device.sections().values()}
        return [runs[started] for started in sorted(runs)]

    def merged_over(self, older: BenchResult) -> BenchResult:
        """This report, with the devices and sections it did not measure taken from ``older`` (on the same model)."""
        if older.model != self.model:
            raise ValueError(f"the reports are of different models: {older.model} and {self.model}")
        devices = {device.device: device for device in older.devices}
        for device in self.devices:
            kept = devices.get(device.device, DeviceResult(device=device.device))
            devices[device.device] = kept.model_copy(update={SECTIONS[option]: section for option, section in device.sections().items()})
        return self.model_copy(update={"devices": [devices[name] for name in sorted(devices, key=DEVICE_ORDER.index)]})
