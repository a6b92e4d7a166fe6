"""What one benchmark run measures: the load plan, the systems' settings, and the full and quick profiles."""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bench.figures import SECTIONS
from bench.servers import REPO
from service.engines.engine_manifest import Precision as TensorRTPrecision


class BenchError(ValueError):
    """A benchmark that cannot run as asked; the message names the option or file at fault."""


def progress(message: str) -> None:
    """A progress line, on stderr (the report goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class LoadPlan:
    """Client counts, and a fixed number of requests per client at each: ``requests_per_level`` spread over the
    clients, at least ``min_requests_per_client`` each.

    A safety net keeps a slow system from stretching the run: after ``level_time_limit_s`` the clients send
    nothing new, and requests still unanswered ``level_grace_s`` later are abandoned; the level says so.
    """

    clients: tuple[int, ...] = (1, 4, 16, 64)
    requests_per_level: int = 240
    min_requests_per_client: int = 6
    level_time_limit_s: float = 30.0
    level_grace_s: float = 15.0

    def requests_per_client(self, clients: int) -> int:
        return max(self.min_requests_per_client, math.ceil(self.requests_per_level / clients))


# A full run sends 1,104 requests to each system (240, 240, 240 and 384 at 1, 4, 16 and 64 clients): at the
# 20 to 40 images/s expected on 2 idle cores, about a minute per system and 4 to 5 minutes in all, within 10.
FULL_PLAN = LoadPlan()
QUICK_PLAN = LoadPlan(requests_per_level=16, min_requests_per_client=1, level_time_limit_s=10.0, level_grace_s=10.0)


@dataclass(frozen=True)
class ExportSpeedPlan:
    """export-speed: the graph against the eager model at these batch sizes, medians over the rounds."""

    batches: tuple[int, ...] = (1, 4, 8)
    rounds: int = 7


@dataclass(frozen=True)
class ThroughputPlan:
    """service-throughput: the service against the raw engine behind its batcher at one client count, in alternating rounds."""

    clients: int = 16
    requests_per_client: int = 20
    rounds: int = 2


@dataclass(frozen=True)
class PrecisionsPlan:
    """precisions: every engine and precision this machine runs, side by side. The raw graph at these batch sizes,
    the configurations alternating round by round (each round about ``images_per_round`` images per configuration
    and batch size); the service under the run's load plan; mAP on ``eval_images`` held-out synthetic scenes.
    ``configurations`` picks some of them by name (empty: all)."""

    batches: tuple[int, ...] = (1, 8, 16)
    rounds: int = 10
    images_per_round: int = 16
    eval_images: int = 300
    eval_seed: int = 13  # the default model trained on seed 1, was validated on 2, tested on 3, quantized on 11 and 12
    map_tolerance: float = 0.01  # of the eager checkpoint's mAP@[.5:.95]
    configurations: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainStepPlan:
    """train-step: training iterations of the package's architecture at these box batches, torchvision's RoIAlign
    against the embedding-bag one alternating, medians over the rounds."""

    batch_size: int = 8  # `model_export train`'s default
    box_batches: tuple[int, ...] = (256, 128)
    rounds: int = 5


@dataclass(frozen=True)
class BenchConfig:
    checkpoint: Path = REPO / "models" / "default" / "model.pt"
    package: Path = REPO / "models" / "default" / "package"
    out: Path = REPO / "bench" / "results"
    cache: Path = REPO / "build" / "bench"  # the precisions section's held-out scenes and TensorRT provider engines, kept between runs
    quick: bool = False
    devices: tuple[str, ...] = ("cpu",)
    sections: tuple[str, ...] = tuple(SECTIONS)
    plan: LoadPlan = field(default_factory=LoadPlan)
    # The fixed set of JPEGs, and the raw engine's batch sizes and images per batch size.
    image_count: int = 24
    raw_batches: tuple[int, ...] = (1, 4, 8, 16)
    raw_images: int = 64
    export: ExportSpeedPlan = field(default_factory=ExportSpeedPlan)
    throughput: ThroughputPlan = field(default_factory=ThroughputPlan)
    precisions: PrecisionsPlan = field(default_factory=PrecisionsPlan)
    train_step: TrainStepPlan = field(default_factory=TrainStepPlan)
    # The service's batching (its defaults), and the threads every system gets (0: each library's default).
    max_batch_size: int = 8
    max_batch_wait_ms: float = 5.0
    max_queue: int = 64
    threads: int = 0
    naive_threads: int | None = None  # None: ``threads``
    # On a GPU: the ONNX Runtime providers for the service and the raw engine, or a prebuilt TensorRT engine.
    gpu_providers: str = "cuda,cpu"
    gpu_engine: Literal["onnxruntime", "tensorrt"] = "onnxruntime"

    def __post_init__(self) -> None:
        unknown = [name for name in self.sections if name not in SECTIONS]
        if unknown or not self.sections:
            raise BenchError(
                f"--only {','.join(self.sections)}: no section {', '.join(unknown) or 'named'}; the sections are {', '.join(SECTIONS)}"
            )
        if {"systems", "export-speed", "precisions"} & set(self.sections) and not self.checkpoint.is_file():
            raise BenchError(
                f"--checkpoint {self.checkpoint}: no such file (train the default model with `make default-model`, or pass one)"
            )
        if not (self.package / "model.json").is_file():
            raise BenchError(
                f"--package {self.package}: not a model package (no model.json); export one with `python -m model_export export`"
            )
        if not self.plan.clients or min(self.plan.clients) < 1:
            raise BenchError(f"--clients should be positive numbers, got {self.plan.clients}")
        if self.plan.requests_per_level < 1:
            raise BenchError(f"--requests should be at least 1, got {self.plan.requests_per_level}")
        if min(self.throughput.clients, self.throughput.requests_per_client, self.throughput.rounds, self.export.rounds) < 1:
            raise BenchError("the service-throughput clients, requests and rounds and the export-speed rounds should be at least 1")
        if min(self.train_step.batch_size, self.train_step.rounds, *self.train_step.box_batches) < 1:
            raise BenchError(f"the train-step section's batch size, box batches and rounds should be at least 1, got {self.train_step}")
        if min(self.precisions.rounds, self.precisions.images_per_round, self.precisions.eval_images, *self.precisions.batches) < 1:
            raise BenchError(f"the precisions section's batches, rounds and --eval-images should be at least 1, got {self.precisions}")
        if self.max_batch_size < 1 or self.threads < 0 or (self.naive_threads or 0) < 0 or self.image_count < 1:
            raise BenchError(
                f"--max-batch-size ({self.max_batch_size}) and the image count ({self.image_count}) should be at least 1, --threads ({self.threads}) and --naive-threads at least 0"
            )

    def as_json(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(self).items()}


def quick_overrides() -> dict[str, Any]:
    """What --quick changes: fewer requests, images, raw runs and rounds (a check that everything works, not figures to publish)."""
    return {
        "plan": QUICK_PLAN,
        "image_count": 8,
        "raw_images": 16,
        "export": ExportSpeedPlan(rounds=2),
        "throughput": ThroughputPlan(requests_per_client=4, rounds=1),
        "precisions": PrecisionsPlan(rounds=2, images_per_round=8, eval_images=16),
        "train_step": TrainStepPlan(batch_size=2, box_batches=(64,), rounds=1),
        "out": REPO / "bench" / "results" / "quick",
    }


@dataclass(frozen=True)
class Configuration:
    """An engine and precision of the service, as its DETECTOR_* settings choose it, for the benchmarks to run side by side."""

    name: str
    label: str
    env: dict[str, str]  # the DETECTOR_* settings that choose the engine, as the service reads them
    # The package's TensorRT engine of this precision: DETECTOR_PRECISION has no fp16 (auto takes the most reduced engine
    # built), so the GPU check opens these by precision, as the factory opens the one it chooses.
    tensorrt_precision: TensorRTPrecision | None = None
