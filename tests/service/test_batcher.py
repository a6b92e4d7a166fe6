"""The dynamic batcher on a real ONNX Runtime engine; faults injected by wrapping the engine."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.servers import REPO
from service.batcher import BatchPolicy, DynamicBatcher
from service.engines.base import BatchOutput, EngineInfo
from service.engines.onnxruntime import OnnxRuntimeEngine
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, QueueFull
from service.manifest import read_manifest
from service.metrics import Metrics


@pytest.fixture(scope="module")
def engine(small_package: Path) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(small_package, read_manifest(small_package), intra_op_threads=1)


@pytest.fixture(scope="module")
def default_engine() -> OnnxRuntimeEngine:
    """The embedded default package: a real engine that needs no export, for tests that time the batcher, not its results."""
    package = REPO / "models" / "default" / "package"
    return OnnxRuntimeEngine(package, read_manifest(package), intra_op_threads=1)


@pytest.fixture(scope="module")
def canvases(engine: OnnxRuntimeEngine, canvases) -> np.ndarray:  # type: ignore[no-untyped-def]
    return canvases(engine.manifest.canvas, 10, seed=8)


class RecordingEngine:
    """The real engine, recording each batch's size and thresholds; optionally failing or stalling."""

    def __init__(self, engine: OnnxRuntimeEngine, fail: bool = False, stall_s: float = 0.0, drop_one: bool = False) -> None:
        self.engine, self.fail, self.stall_s, self.drop_one = engine, fail, stall_s, drop_one
        self.max_batch = engine.max_batch
        self.calls: list[tuple[int, float, float]] = []
        self.release = threading.Event()

    def run(self, images: np.ndarray, score_threshold: float, iou_threshold: float) -> BatchOutput:
        self.calls.append((len(images), score_threshold, iou_threshold))
        if self.stall_s:
            self.release.wait(self.stall_s)
        if self.fail:
            raise RuntimeError("injected fault")
        output = self.engine.run(images, score_threshold, iou_threshold)
        if self.drop_one:
            return BatchOutput(output.num_detections[1:], output.boxes[1:], output.scores[1:], output.labels[1:])
        return output

    def describe(self) -> EngineInfo:
        return self.engine.describe()


def _batcher(engine: Any, max_batch_size: int = 8, wait_ms: float = 50.0, max_queue: int = 64) -> DynamicBatcher:
    return DynamicBatcher(engine, BatchPolicy(max_batch_size, wait_ms, max_queue), Metrics().model("test", "1"))


async def _alone(engine: OnnxRuntimeEngine, canvas: np.ndarray, score: float, iou: float) -> Any:
    batcher = _batcher(engine, max_batch_size=1, wait_ms=0)
    batcher.start()
    try:
        return (await batcher.submit(canvas, score, iou, 30.0)).detections
    finally:
        await batcher.drain_and_stop()


@contextlib.asynccontextmanager
async def _stalled(
    engine: OnnxRuntimeEngine, first: np.ndarray, max_queue: int = 64
) -> AsyncIterator[tuple[RecordingEngine, DynamicBatcher]]:
    """A batcher of one request per batch whose engine holds its first batch (``first``) until released; released,
    answered and stopped at the end of the block."""
    stalled = RecordingEngine(engine, stall_s=10)
    batcher = _batcher(stalled, max_batch_size=1, wait_ms=0, max_queue=max_queue)
    batcher.start()
    running = asyncio.create_task(batcher.submit(first, 0.3, 0.5, 30.0))
    await asyncio.sleep(0.2)  # the first request is in the engine
    try:
        yield stalled, batcher
    finally:
        stalled.release.set()
        await running
        await batcher.drain_and_stop()


def test_concurrent_requests_share_batches_and_get_exactly_their_own_results(engine: OnnxRuntimeEngine, canvases: np.ndarray) -> None:
    requests = [(canvases[i % len(canvases)], [0.05, 0.2, 0.4][i % 3], [0.5, 0.7][i % 2]) for i in range(24)]

    async def scenario() -> tuple[list[Any], list[Any], RecordingEngine]:
        recording = RecordingEngine(engine)
        batcher = _batcher(recording)
        batcher.start()
        batched = await asyncio.gather(*(batcher.submit(c, s, iou, 30.0) for c, s, iou in requests))
        await batcher.drain_and_stop()
        alone = [await _alone(engine, c, s, iou) for c, s, iou in requests]
        return batched, alone, recording

    batched, alone, recording = asyncio.run(scenario())
    assert max(size for size, _, _ in recording.calls) > 1, "concurrent requests should have been batched"
    assert all(size <= 8 for size, _, _ in recording.calls)
    for result, reference in zip(batched, alone, strict=True):
        got = result.detections
        assert len(got.scores) == len(reference.scores)
        np.testing.assert_allclose(got.boxes, reference.boxes, atol=1e-3)
        np.testing.assert_allclose(got.scores, reference.scores, atol=1e-5)
        np.testing.assert_array_equal(got.labels, reference.labels)
    assert any(len(r.detections.scores) for r in batched)


def test_a_batch_shares_one_iou_threshold_and_runs_at_its_lowest_score(engine: OnnxRuntimeEngine, canvases: np.ndarray) -> None:
    async def scenario() -> RecordingEngine:
        recording = RecordingEngine(engine)
        batcher = _batcher(recording, wait_ms=100)
        batcher.start()
        await asyncio.gather(*(batcher.submit(canvases[i], [0.3, 0.1][i % 2], [0.5, 0.6][i // 3], 30.0) for i in range(6)))
        await batcher.drain_and_stop()
        return recording

    calls = asyncio.run(scenario()).calls
    assert sorted(calls) == [(3, 0.1, 0.5), (3, 0.1, 0.6)], calls


def _queue_times(engine: OnnxRuntimeEngine, wait_ms: float, requests: int) -> list[float]:
    """The batcher's own queue-time figure (submit to batch start) for lone requests sent one after another."""
    blank = np.full((*engine.manifest.canvas, 3), 114, dtype=np.uint8)

    async def scenario() -> list[float]:
        batcher = _batcher(engine, wait_ms=wait_ms)
        batcher.start()
        queued = [(await batcher.submit(blank, 0.3, 0.5, 30.0)).queue_s for _ in range(requests)]
        await batcher.drain_and_stop()
        return queued

    return asyncio.run(scenario())


def test_no_wait_runs_each_request_at_once(default_engine: OnnxRuntimeEngine) -> None:
    queued = _queue_times(default_engine, wait_ms=0, requests=5)
    # With no wait a request waits only for the consumer's next turn of the event loop: about a millisecond.
    # The median forgives one scheduling stall of a busy machine; none may come near a wait for company.
    assert sorted(queued)[2] < 0.2 and max(queued) < 1.0, queued


def test_a_lone_request_waits_the_configured_time_for_company(default_engine: OnnxRuntimeEngine) -> None:
    # The figure the test above bounds is a real measure of waiting: here it includes the whole configured wait.
    assert min(_queue_times(default_engine, wait_ms=300, requests=2)) >= 0.29


def test_a_failing_batch_fails_its_requests_and_the_next_batch_runs(engine: OnnxRuntimeEngine, canvases: np.ndarray) -> None:
    async def scenario() -> None:
        faulty = RecordingEngine(engine, fail=True)
        batcher = _batcher(faulty)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(canvases[i], 0.3, 0.5, 30.0) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, InferenceFailed) for r in results), results
        faulty.fail = False
        ok = await batcher.submit(canvases[0], 0.3, 0.5, 30.0)
        assert ok.batch_size == 1
        await batcher.drain_and_stop()

    asyncio.run(scenario())


def test_a_result_count_mismatch_fails_the_batch(engine: OnnxRuntimeEngine, canvases: np.ndarray) -> None:
    async def scenario() -> list[Any]:
        batcher = _batcher(RecordingEngine(engine, drop_one=True))
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(canvases[i], 0.3, 0.5, 30.0) for i in range(2)), return_exceptions=True)
        await batcher.drain_and_stop()
        return results

    results = asyncio.run(scenario())
    assert all(isinstance(r, InferenceFailed) and "returned 1 results for a batch of 2" in r.detail for r in results), results


def test_full_queue_refuses_at_once(engine: OnnxRuntimeEngine, canvases: np.ndarray) -> None:
    async def scenario() -> None:
        async with _stalled(engine, canvases[0], max_queue=2) as (_, batcher):  # the next two fill the queue
            queued = [asyncio.create_task(batcher.submit(canvases[i], 0.3, 0.5, 30.0)) for i in (1, 2)]
            await asyncio.sleep(0.05)
            started = time.monotonic()
            with pytest.raises(QueueFull):
                await batcher.submit(canvases[3], 0.3, 0.5, 30.0)
            assert time.monotonic() - started < 0.5
        await asyncio.gather(*queued)

    asyncio.run(scenario())


def test_a_request_whose_deadline_passes_in_the_queue_is_never_run(engine: OnnxRuntimeEngine, canvases: np.ndarray) -> None:
    async def scenario() -> RecordingEngine:
        async with _stalled(engine, canvases[0]) as (stalled, batcher):
            with pytest.raises(DeadlineExceeded):
                await batcher.submit(canvases[1], 0.3, 0.5, 0.2)
        return stalled

    assert [size for size, _, _ in asyncio.run(scenario()).calls] == [1], "the expired request must not run"


def test_drain_answers_queued_requests_then_refuses(engine: OnnxRuntimeEngine, canvases: np.ndarray) -> None:
    async def scenario() -> None:
        batcher = _batcher(engine, max_batch_size=2, wait_ms=0)
        batcher.start()
        pending = [asyncio.create_task(batcher.submit(canvases[i], 0.3, 0.5, 30.0)) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.drain_and_stop()
        results = await asyncio.wait_for(asyncio.gather(*pending), timeout=1.0)  # answered, not cancelled
        assert [r.batch_size for r in results] == [2, 2, 2, 2, 1]
        with pytest.raises(NotReady):
            await batcher.submit(canvases[0], 0.3, 0.5, 30.0)

    asyncio.run(scenario())


def test_policy_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_batch_size should be at least 1"):
        BatchPolicy(0, 1.0, 4)
    with pytest.raises(ValueError, match="max_queue should be at least 1"):
        BatchPolicy(1, 1.0, 0)


def test_a_request_whose_client_left_is_dropped_before_inference(engine: OnnxRuntimeEngine, canvases: np.ndarray) -> None:
    async def scenario() -> RecordingEngine:
        async with _stalled(engine, canvases[0]) as (stalled, batcher):
            gone = asyncio.create_task(batcher.submit(canvases[1], 0.3, 0.5, 30.0))
            await asyncio.sleep(0.05)
            gone.cancel()  # what the server does when the client disconnects
        return stalled

    assert [size for size, _, _ in asyncio.run(scenario()).calls] == [1]
