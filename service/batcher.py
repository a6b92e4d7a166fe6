"""The dynamic batcher: concurrent requests become batches on one inference thread.

One future per request; one consumer task (started and stopped by the app's
lifespan) forms batches and runs them on a dedicated thread, so the event loop
never waits on the model.

Batching rules:

* a batch holds up to ``max_batch_size`` requests that share an IoU threshold
  (the graph takes one per run); the oldest waiting request picks it;
* a partial batch waits at most ``max_batch_wait_ms`` after its oldest request
  arrived for company (0: no wait);
* the graph runs at the batch's lowest score threshold; each request's own
  threshold is applied to its rows afterwards, so results are exact;
* a request whose deadline passes while queued is answered DeadlineExceeded and
  never run; at most ``max_queue`` requests wait, the next one gets QueueFull.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.engines.base import BatchOutput, Engine
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, QueueFull
from service.metrics import ModelMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    """How requests are gathered into batches: at most max_batch_size, held at most max_batch_wait_ms, at most max_queue waiting."""

    max_batch_size: int
    max_batch_wait_ms: float
    max_queue: int

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size should be at least 1, got {self.max_batch_size}")
        if self.max_batch_wait_ms < 0:
            raise ValueError(f"max_batch_wait_ms should be >= 0, got {self.max_batch_wait_ms}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue should be at least 1, got {self.max_queue}")


@dataclass(frozen=True)
class CanvasRows:
    """One image's rows, canvas pixels. boxes (ndarray[N, 4]), scores (ndarray[N]) descending, labels (ndarray[N])."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class BatchResult:
    detections: CanvasRows
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass
class _Pending:
    canvas: np.ndarray
    score_threshold: float
    iou_threshold: float
    deadline: float  # time.monotonic()
    enqueued: float
    future: asyncio.Future[BatchResult] = field(repr=False)


def split_rows(output: BatchOutput, index: int, score_threshold: float) -> CanvasRows:
    """Image ``index``'s valid rows with a score above its own threshold (the graph's rule: score > threshold)."""
    count = int(output.num_detections[index])
    scores = output.scores[index, :count]
    keep = scores > score_threshold
    return CanvasRows(output.boxes[index, :count][keep], scores[keep], output.labels[index, :count][keep])


class DynamicBatcher:
    def __init__(self, engine: Engine, policy: BatchPolicy, metrics: ModelMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.policy = policy
        self.max_batch = min(policy.max_batch_size, engine.max_batch)
        self.metrics = metrics
        self.clock = clock
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._consumer: asyncio.Task[None] | None = None
        self._accepting = False
        self._stopping = False
        self.consecutive_failures = 0  # failed batches since the last good one; the detector's health reads it

    # Lifecycle

    def start(self) -> None:
        if self._consumer is not None:
            raise RuntimeError("the batcher is already running")
        self._accepting = True
        self._consumer = asyncio.create_task(self._consume(), name="batcher")

    async def drain_and_stop(self) -> None:
        """Refuses new requests, answers every queued one, then stops the consumer and the inference thread."""
        self._accepting = False
        self._stopping = True
        self._arrived.set()
        if self._consumer is not None:
            await self._consumer  # returns once the queue is empty and the last batch answered
            self._consumer = None
        self._executor.shutdown(wait=True)

    @property
    def depth(self) -> int:
        return len(self._queue)

    # Producer side

    async def submit(self, canvas: np.ndarray, score_threshold: float, iou_threshold: float, timeout_s: float) -> BatchResult:
        """Queues one canvas; returns its detections at its own thresholds, or raises a ServiceError."""
        if not self._accepting:
            raise NotReady("the server is shutting down")
        if timeout_s <= 0:
            self.metrics.rejected.labels(reason="deadline").inc()
            raise DeadlineExceeded("the request's deadline passed before it could be queued")
        if len(self._queue) >= self.policy.max_queue:
            self.metrics.rejected.labels(reason="queue_full").inc()
            raise QueueFull(f"{len(self._queue)} requests are already waiting (the limit is {self.policy.max_queue}); retry shortly")
        now = self.clock()
        pending = _Pending(canvas, score_threshold, iou_threshold, now + timeout_s, now, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self.metrics.queue_depth.set(len(self._queue))
        self._arrived.set()
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), timeout=timeout_s)
        except TimeoutError:
            if pending.future.done():
                # Answered, or expired in the queue (and counted there), just as the timer fired.
                return pending.future.result()
            pending.future.cancel()  # if still queued, the consumer drops it
            self.metrics.rejected.labels(reason="deadline").inc()
            raise DeadlineExceeded("the request's deadline passed before its result was ready") from None
        except asyncio.CancelledError:
            pending.future.cancel()  # the client went away: never run it if it is still queued
            raise

    # Consumer side

    async def _consume(self) -> None:
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            try:
                await self._wait_for_company()
                batch = self._take_batch()
                if batch:
                    await self._run(batch)
            except Exception:  # the consumer must outlive any one batch
                log.exception("the batcher's consumer hit an unexpected error")

    async def _wait_for_company(self) -> None:
        """Lets a partial batch wait, until max_batch_wait_ms after its oldest request, for more of its kind."""
        oldest = self._queue[0]
        closes = oldest.enqueued + self.policy.max_batch_wait_ms / 1000
        while not self._stopping and self.clock() < closes and self._count_like(oldest) < self.max_batch:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=max(0.0, closes - self.clock()))
            except TimeoutError:
                break

    def _count_like(self, first: _Pending) -> int:
        return sum(1 for p in self._queue if p.iou_threshold == first.iou_threshold)

    def _take_batch(self) -> list[_Pending]:
        """Up to max_batch live requests sharing the oldest one's IoU threshold; expired ones are answered 504."""
        iou = self._queue[0].iou_threshold
        batch: list[_Pending] = []
        rest: collections.deque[_Pending] = collections.deque()
        now = self.clock()
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():  # the client gave up (deadline or disconnect)
                continue
            if pending.deadline <= now:
                self.metrics.rejected.labels(reason="deadline").inc()
                pending.future.set_exception(DeadlineExceeded("the request's deadline passed while it was queued"))
            elif pending.iou_threshold == iou and len(batch) < self.max_batch:
                batch.append(pending)
            else:
                rest.append(pending)
        self._queue = rest
        self.metrics.queue_depth.set(len(self._queue))
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        started = self.clock()
        images = np.stack([p.canvas for p in batch])
        lowest = min(p.score_threshold for p in batch)
        loop = asyncio.get_running_loop()
        try:
            output = await loop.run_in_executor(self._executor, self.engine.run, images, lowest, batch[0].iou_threshold)
            if len(output) != len(batch):
                raise InferenceFailed(f"the engine returned {len(output)} results for a batch of {len(batch)}")
        except Exception as error:  # one failing batch fails its requests; the server goes on
            log.exception("inference failed for a batch of %d", len(batch))
            self.consecutive_failures += 1
            self.metrics.inference_failures.inc()
            failure = error if isinstance(error, InferenceFailed) else InferenceFailed(f"inference failed: {type(error).__name__}")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            return
        self.consecutive_failures = 0
        inference_s = self.clock() - started
        self.metrics.inference_duration.observe(inference_s)
        self.metrics.batch_size.observe(len(batch))
        for index, pending in enumerate(batch):
            queue_s = started - pending.enqueued
            self.metrics.queue_wait.observe(queue_s)
            if not pending.future.done():
                result = BatchResult(split_rows(output, index, pending.score_threshold), queue_s, inference_s, len(batch))
                pending.future.set_result(result)
