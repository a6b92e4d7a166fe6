"""The export-speed section: the exported graph against the eager torchvision model it came from, per image.

The graph runs in the engine the service builds (the raw engine), the eager model as the naive baseline loads it
(same weights, canvas, thresholds and detection limit), both in this process on the same letterboxed canvases.
At each batch size they run alternately, round by round, so that the machine's noise hits both alike; the
figures are medians over the rounds. torch is imported here only, when the section runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from bench import compare, raw_engine
from bench.config import BenchConfig, progress
from bench.figures import ExportSpeedSection, Run, SpeedRow
from bench.images import ImageSet
from bench.systems import engine_env
from service.manifest import ModelManifest


def _ms_per_image(run: Callable[[np.ndarray], None], batch: np.ndarray) -> float:
    started = time.perf_counter()
    run(batch)
    return (time.perf_counter() - started) / len(batch) * 1000


def measure(config: BenchConfig, manifest: ModelManifest, images: ImageSet, device: str, run: Run) -> ExportSpeedSection:
    import torch

    from bench.naive_server import load_model

    threads = config.threads if config.naive_threads is None else config.naive_threads
    if threads > 0:
        torch.set_num_threads(threads)
    torch_device = torch.device("cuda" if device == "gpu" else "cpu")
    model = load_model(config.checkpoint, manifest, torch_device).model
    engine = raw_engine.build_engine(config.package, manifest, engine_env(config, device))
    canvases = raw_engine.canvases(images.bodies, manifest.canvas)

    def eager(batch: np.ndarray) -> None:
        with torch.inference_mode():
            model([torch.from_numpy(canvas).permute(2, 0, 1).float().div(255).to(torch_device) for canvas in batch])
        if torch_device.type == "cuda":
            torch.cuda.synchronize()  # the time of the work, not of queueing it

    def graph(batch: np.ndarray) -> None:
        engine.run(batch, manifest.score_threshold, manifest.iou_threshold)

    rows = []
    for size in [b for b in config.export.batches if b <= manifest.max_batch]:
        batch = canvases[np.arange(size) % len(canvases)]
        eager(batch)  # first runs at a new shape: allocations
        graph(batch)
        times: dict[str, list[float]] = {"eager": [], "graph": []}
        for _ in range(config.export.rounds):
            times["eager"].append(_ms_per_image(eager, batch))
            times["graph"].append(_ms_per_image(graph, batch))
        eager_ms, graph_ms = statistics.median(times["eager"]), statistics.median(times["graph"])
        rows.append(
            SpeedRow(
                batch=size,
                eager_ms_per_image=round(eager_ms, 2),
                graph_ms_per_image=round(graph_ms, 2),
                ratio=round(graph_ms / eager_ms, 3),
            )
        )
        progress(
            f"[{device}] export-speed, batch {size}: eager {rows[-1].eager_ms_per_image}, graph {rows[-1].graph_ms_per_image} ms per image"
        )
    eager_info = {"engine": "torch eager", "torch": torch.__version__, "device": str(torch_device), "threads": torch.get_num_threads()}
    section = ExportSpeedSection(run=run, engine=engine.describe(), eager=eager_info, rounds=config.export.rounds, rows=rows)
    section.goals = compare.export_goals(section)
    return section
