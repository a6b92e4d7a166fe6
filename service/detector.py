"""The request path: decode -> letterbox -> submit to the batcher -> map boxes back -> respond."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from service.batcher import BatchPolicy, BatchResult, DynamicBatcher
from service.decode import decode_image
from service.engines import Engine, create_engine
from service.engines.choice import EngineChoice, choose_engine
from service.errors import DeadlineExceeded, NotReady, ServiceError
from service.letterbox import Letterbox, fit_scale, letterbox
from service.manifest import ModelManifest, read_manifest
from service.metrics import ModelMetrics
from service.options import DetectParams
from service.render import render_image
from service.schemas import Detection, ModelDescription, Runtime
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageDetections:
    """One image's detections in the uploaded image's pixels (after EXIF orientation): what each protocol encodes.

    boxes (ndarray[n, 4] float64, x1, y1, x2, y2), scores (ndarray[n] float32, descending), labels (ndarray[n] int64).
    """

    width: int
    height: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    queue_s: float
    inference_s: float
    total_s: float
    batch_size: int  # the batch the image ran in, for the request log

    def __len__(self) -> int:
        return len(self.scores)


class Detector:
    """One model version: owns its engine, batcher and decode threads; built and closed by the model repository.

    ``settings.model_dir`` is this version's package directory.
    """

    def __init__(self, settings: Settings, manifest: ModelManifest, engine: Engine, choice: EngineChoice, metrics: ModelMetrics) -> None:
        self.settings = settings
        self.manifest = manifest
        self.engine = engine
        self.choice = choice
        self.metrics = metrics
        self.batcher = DynamicBatcher(engine, BatchPolicy(settings.max_batch_size, settings.max_batch_wait_ms, settings.max_queue), metrics)
        self._decoders = concurrent.futures.ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
        self._ready = False  # false while loading and once draining
        self._serving = False  # whether /detect is served: through the drain, until close()
        self._probe: asyncio.Task[None] | None = None
        self._leases = 0  # requests that resolved this version and are not answered yet
        self._unleased = asyncio.Event()
        self._unleased.set()

    @classmethod
    def load(cls, settings: Settings, metrics: ModelMetrics) -> Detector:
        """Reads the package and builds the engine (slow: call it off the event loop)."""
        manifest = read_manifest(settings.model_dir)
        engine, choice = choose_engine(settings, manifest, build=create_engine)
        log.info("engine chosen", extra={"engine": choice.engine, "precision": choice.precision, "by": choice.by, "reason": choice.reason})
        return cls(settings, manifest, engine, choice, metrics)

    async def start(self) -> None:
        """Starts the batcher, runs a warm-up batch, then reports ready."""
        self.batcher.start()
        if self.settings.warmup:
            started = time.monotonic()
            await asyncio.gather(*(self._run_blank(120.0) for _ in range(self.batcher.max_batch)))
            log.info("warm-up done", extra={"seconds": round(time.monotonic() - started, 3), "batch": self.batcher.max_batch})
        self._ready = self._serving = True
        self._probe = asyncio.create_task(self._probe_while_unhealthy(), name="recovery-probe")

    def publish_metrics(self) -> None:
        """Points this version's ready gauge at this detector: called by the repository once it takes traffic, so that a
        reload that fails leaves the gauge reading the copy still serving. Read at each scrape, never stale."""
        self.metrics.ready.set_function(lambda: float(self.ready))
        self.metrics.serving(self.engine.describe().provider)

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

    @contextlib.contextmanager
    def lease(self) -> Iterator[Detector]:
        """Held by a request from the moment it resolves this version until it is answered: close() waits for every
        lease, so a request that found this version is served by it even if it is unloaded meanwhile."""
        self._leases += 1
        self._unleased.clear()
        try:
            yield self
        finally:
            self._leases -= 1
            if self._leases == 0:
                self._unleased.set()

    async def close(self, grace_s: float | None = None) -> None:
        """Stops taking traffic, waits up to ``grace_s`` (default: the shutdown grace) for the requests holding a lease,
        answers every queued one, then stops the batcher and the decode threads."""
        self.begin_drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._unleased.wait(), self.settings.shutdown_grace_s if grace_s is None else grace_s)
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

    def runtime(self) -> Runtime:
        return Runtime(
            **self.engine.describe().model_dump(),
            max_batch_size=self.batcher.max_batch,
            max_batch_wait_ms=self.settings.max_batch_wait_ms,
            max_queue=self.settings.max_queue,
            request_timeout_s=self.settings.request_timeout_s,
            choice=self.choice,
        )

    def describe(self) -> ModelDescription:
        return ModelDescription(manifest=self.manifest, runtime=self.runtime(), ready=self.ready)

    async def detect(self, data: bytes, params: DetectParams) -> ImageDetections:
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
        detections = self._to_image(result, placement, params, total_s=time.monotonic() - started)
        self.metrics.images.inc()
        self.metrics.detections.inc(len(detections))
        return detections

    async def render(self, data: bytes, detections: Sequence[Detection], media_type: str) -> bytes:
        """The uploaded image with ``detections`` drawn (service/render.py), on the decode threads: never on the event loop."""
        if not self._serving:
            raise NotReady("the model is not being served (loading, warming up or stopped)")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decoders, render_image, data, detections, media_type, self.settings.max_image_pixels)

    def _prepare(self, data: bytes) -> tuple[np.ndarray, Letterbox]:
        image, (width, height) = decode_image(data, self.settings.max_image_pixels, fit=self.manifest.canvas)
        canvas, _ = letterbox(image, self.manifest.canvas)
        # Boxes map back to the full-size image, whatever scale the decoder chose.
        return canvas, Letterbox(width, height, fit_scale(width, height, self.manifest.canvas))

    def _to_image(self, result: BatchResult, placement: Letterbox, params: DetectParams, total_s: float) -> ImageDetections:
        rows = result.detections
        keep = np.ones(len(rows.scores), dtype=bool)
        if params.classes is not None:
            keep &= np.isin(rows.labels, list(params.classes))
        limit = params.max_detections or self.manifest.max_detections
        return ImageDetections(
            width=placement.width,
            height=placement.height,
            boxes=placement.boxes_to_image(rows.boxes[keep].astype(np.float64))[:limit],
            scores=rows.scores[keep][:limit],
            labels=rows.labels[keep][:limit].astype(np.int64),
            queue_s=result.queue_s,
            inference_s=result.inference_s,
            total_s=total_s,
            batch_size=result.batch_size,
        )
