"""The request path: decode -> letterbox -> submit to the batcher -> map boxes back -> respond."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.batcher import BatchPolicy, BatchResult, DynamicBatcher
from service.decode import decode_image
from service.engines import Engine, create_engine
from service.errors import DeadlineExceeded, InvalidParameter, NotReady, ServiceError
from service.letterbox import Letterbox, fit_scale, letterbox
from service.manifest import ModelManifest, read_manifest, verify_graph_file
from service.metrics import Metrics
from service.schemas import Box, Detection, DetectResponse, ImageSize, ModelRef, Timing
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectParams:
    """A request's options, already range-checked; None means the manifest's default."""

    score_threshold: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None
    classes: frozenset[int] | None = None  # label ids to keep
    timeout_s: float | None = None
    arrived: float | None = None  # time.monotonic() when the request arrived; the deadline counts from it


class Detector:
    """Owns the engine, the batcher and the decode threads; built and closed by the app's lifespan."""

    def __init__(self, settings: Settings, manifest: ModelManifest, engine: Engine, metrics: Metrics) -> None:
        self.settings = settings
        self.manifest = manifest
        self.engine = engine
        self.metrics = metrics
        self.batcher = DynamicBatcher(engine, BatchPolicy(settings.max_batch_size, settings.max_batch_wait_ms, settings.max_queue), metrics)
        self._decoders = concurrent.futures.ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
        self._ready = False  # false while loading and once draining
        self._serving = False  # whether /detect is served: through the drain, until close()
        self._probe: asyncio.Task[None] | None = None
        self.class_ids = {name: label for label, name in enumerate(manifest.categories) if label > 0}
        # Read at each scrape, so that the gauge never disagrees with /health/ready.
        metrics.ready.set_function(lambda: float(self.ready))

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics) -> Detector:
        """Reads the package and builds the engine (slow: call it off the event loop)."""
        manifest = read_manifest(settings.model_dir)
        verify_graph_file(settings.model_dir, manifest)
        engine = create_engine(settings, manifest)
        return cls(settings, manifest, engine, metrics)

    async def start(self) -> None:
        """Starts the batcher, runs a warm-up batch, then reports ready."""
        self.batcher.start()
        if self.settings.warmup:
            started = time.monotonic()
            await asyncio.gather(*(self._run_blank(120.0) for _ in range(self.batcher.max_batch)))
            log.info("warm-up done", extra={"seconds": round(time.monotonic() - started, 3), "batch": self.batcher.max_batch})
        self._ready = self._serving = True
        self._probe = asyncio.create_task(self._probe_while_unhealthy(), name="recovery-probe")
        self.metrics.model_info.labels(self.manifest.name, self.manifest.version, self.engine.describe()["provider"]).set(1)

    async def _run_blank(self, timeout_s: float) -> None:
        blank = np.full((*self.manifest.canvas, 3), 114, dtype=np.uint8)
        await self.batcher.submit(blank, 0.5, self.manifest.iou_threshold, timeout_s)

    async def _probe_while_unhealthy(self) -> None:
        """An unready server gets no traffic, so no batch could prove it well again: a blank probe does."""
        while True:
            await asyncio.sleep(self.settings.recovery_probe_s)
            if self.healthy:
                continue
            try:
                await self._run_blank(self.settings.request_timeout_s)
                log.warning("a probe batch succeeded; the engine is healthy again")
            except ServiceError as error:
                log.warning("a probe batch failed: %s", error.detail)

    @property
    def healthy(self) -> bool:
        return self.batcher.consecutive_failures < self.settings.unhealthy_after_failures

    def begin_drain(self) -> None:
        """Readiness turns false at once (the load balancer stops sending); requests already here are still served."""
        self._ready = False

    async def close(self) -> None:
        self.begin_drain()
        self._serving = False
        if self._probe is not None:
            self._probe.cancel()
        await self.batcher.drain_and_stop()
        self._decoders.shutdown(wait=True)

    @property
    def ready(self) -> bool:
        """What /health/ready reports: loaded, warmed up, not draining, and the last batches did not all fail."""
        return self._ready and self.healthy

    def unready_reason(self) -> str:
        if self._ready and not self.healthy:
            return f"the last {self.batcher.consecutive_failures} batches failed in the engine; a probe retries every {self.settings.recovery_probe_s:g} s"
        return "the model is loading, warming up or draining"

    def describe(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest.as_json(),
            "runtime": {
                **self.engine.describe(),
                "max_batch_size": self.batcher.max_batch,
                "max_batch_wait_ms": self.settings.max_batch_wait_ms,
                "max_queue": self.settings.max_queue,
                "request_timeout_s": self.settings.request_timeout_s,
            },
            "ready": self.ready,
        }

    def resolve_classes(self, names: list[str]) -> frozenset[int]:
        unknown = [name for name in names if name not in self.class_ids]
        if unknown:
            raise InvalidParameter(f"unknown class name(s) {unknown}; this model knows {sorted(self.class_ids)}")
        return frozenset(self.class_ids[name] for name in names)

    async def detect(self, data: bytes, params: DetectParams) -> DetectResponse:
        if not self._serving:
            raise NotReady("the model is not being served (loading, warming up or stopped)")
        started = params.arrived or time.monotonic()
        deadline = started + min(params.timeout_s or self.settings.request_timeout_s, self.settings.request_timeout_s)
        if time.monotonic() >= deadline:
            self.metrics.rejected.labels(reason="deadline").inc()
            raise DeadlineExceeded("the request's deadline passed before its image could be decoded")
        loop = asyncio.get_running_loop()
        canvas, placement = await loop.run_in_executor(self._decoders, self._prepare, data)
        score = self.manifest.score_threshold if params.score_threshold is None else params.score_threshold
        iou = self.manifest.iou_threshold if params.iou_threshold is None else params.iou_threshold
        result = await self.batcher.submit(canvas, score, iou, deadline - time.monotonic())
        detections = self._to_image(result, placement, params)
        self.metrics.images.inc()
        self.metrics.detections.inc(len(detections))
        return DetectResponse(
            model=ModelRef(name=self.manifest.name, version=self.manifest.version),
            image=ImageSize(width=placement.width, height=placement.height),
            detections=detections,
            timing_ms=Timing(
                queue=round(result.queue_s * 1000, 3),
                inference=round(result.inference_s * 1000, 3),
                total=round((time.monotonic() - started) * 1000, 3),
            ),
            batch_size=result.batch_size,
        )

    def _prepare(self, data: bytes) -> tuple[np.ndarray, Letterbox]:
        image, (width, height) = decode_image(data, self.settings.max_image_pixels, fit=self.manifest.canvas)
        canvas, _ = letterbox(image, self.manifest.canvas)
        # Boxes map back to the full-size image, whatever scale the decoder chose.
        return canvas, Letterbox(width, height, fit_scale(width, height, self.manifest.canvas))

    def _to_image(self, result: BatchResult, placement: Letterbox, params: DetectParams) -> list[Detection]:
        rows = result.detections
        keep = np.ones(len(rows.scores), dtype=bool)
        if params.classes is not None:
            keep &= np.isin(rows.labels, list(params.classes))
        boxes = placement.boxes_to_image(rows.boxes[keep].astype(np.float64))
        scores, labels = rows.scores[keep], rows.labels[keep]
        limit = params.max_detections or self.manifest.max_detections
        categories = self.manifest.categories
        return [
            Detection(
                box=Box(x1=float(b[0]), y1=float(b[1]), x2=float(b[2]), y2=float(b[3])),
                score=float(s),
                label=int(label),
                class_name=categories[int(label)],
            )
            for b, s, label in zip(boxes[:limit], scores[:limit], labels[:limit], strict=True)
        ]
