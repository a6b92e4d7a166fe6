"""The raw engine: the exported graph at a fixed batch size, no HTTP, no decoding, no batcher.

The engine is built by the service's own factory from the same settings the
service gets, so the two differ only by what the service adds around it.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from bench.figures import Latency, RawResult
from service.engines import Engine, create_engine
from service.letterbox import letterbox
from service.manifest import ModelManifest
from service.settings import load_settings


def build_engine(package: Path, manifest: ModelManifest, env: dict[str, str]) -> Engine:
    """The engine that ``python -m service`` builds from these ``DETECTOR_*`` variables."""
    overrides = {key.removeprefix("DETECTOR_").lower(): value for key, value in env.items() if key.startswith("DETECTOR_")}
    return create_engine(load_settings(**{**overrides, "model_dir": package}), manifest)


def canvases(bodies: Sequence[bytes], canvas: tuple[int, int]) -> np.ndarray:
    """The JPEGs decoded and letterboxed as the service does it: ndarray[N, H, W, 3] uint8."""
    return np.stack([letterbox(Image.open(io.BytesIO(body)).convert("RGB"), canvas)[0] for body in bodies])


def measure(engine: Engine, images: np.ndarray, batch: int, count: int, score_threshold: float, iou_threshold: float) -> RawResult:
    """Runs ``count // batch`` batches (at least one) of consecutive images, after one warm-up run at this batch size."""
    runs = max(1, count // batch)
    batches = [images[np.arange(r * batch, (r + 1) * batch) % len(images)] for r in range(runs)]
    engine.run(batches[0], score_threshold, iou_threshold)  # a new input shape: first-run allocations
    times = []
    for inputs in batches:
        started = time.perf_counter()
        engine.run(inputs, score_threshold, iou_threshold)
        times.append(time.perf_counter() - started)
    latency = Latency.of(times)
    if latency is None:
        raise RuntimeError("no batch was timed")
    total = sum(times)
    return RawResult(
        batch=batch, images=runs * batch, seconds=round(total, 3), images_per_s=round(runs * batch / total, 2), batch_latency_ms=latency
    )
