"""The train-step section: a training iteration of the package's architecture with torchvision's RoIAlign and with
the embedding-bag RoIAlign that `model_export train` uses (model_export.roi_align_bags), side by side.

Both start from the same random weights on the same batch of synthetic scenes at the package's canvas (the shapes'
classes: it is the architecture's cost that is timed, not the package's weights). Each round runs one step of
each, alternately, so that the machine's noise hits both alike; the figures are medians over the rounds, after a
first step each (allocations). One pair of models per box batch: the RoIs a step samples for the box head.
torch is imported here only, when the section runs.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from bench.config import BenchConfig, progress
from bench.figures import Goal, Run, TrainStepRow, TrainStepSection
from bench.images import ImageSet
from service.manifest import ModelManifest

GOAL_BAGS_FRACTION = 0.9  # an iteration with the bags against one with torchvision's RoIAlign
DATA_SEED = 31  # the scenes timed; no model is trained on them


def _batch(size: int, canvas: tuple[int, int], device: Any) -> tuple[list[Any], list[dict[str, Any]], int]:
    """``size`` synthetic scenes on the canvas, as training presents them (no augmentation), and the class count."""
    from model_export.coco import load_dataset
    from model_export.config import SynthConfig
    from model_export.synth import write_dataset
    from model_export.train import CanvasDataset

    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as scratch:
        dataset = load_dataset(write_dataset(Path(scratch), SynthConfig(count=size, seed=DATA_SEED, empty_fraction=0)).parent)
        items = [CanvasDataset(dataset.images, canvas, augment=False)[index] for index in range(size)]
    images = [image.to(device) for image, _ in items]
    targets = [{key: value.to(device) for key, value in target.items()} for _, target in items]
    return images, targets, len(dataset.categories)


def measure(config: BenchConfig, manifest: ModelManifest, images: ImageSet, device: str, run: Run) -> TrainStepSection:
    import torch

    from model_export.architectures import build_model
    from model_export.roi_align_bags import bags_roi_align

    if config.threads > 0:
        torch.set_num_threads(config.threads)
    torch_device = torch.device("cuda" if device == "gpu" else "cpu")
    plan = config.train_step
    batch_images, targets, classes = _batch(plan.batch_size, manifest.canvas, torch_device)

    def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, pooling: AbstractContextManager[None]) -> float:
        started = time.perf_counter()
        with pooling:
            losses = model(batch_images, targets)
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
        optimizer.step()
        if torch_device.type == "cuda":
            torch.cuda.synchronize()  # the time of the work, not of queueing it
        return time.perf_counter() - started

    rows = []
    for box_batch in plan.box_batches:
        torch.manual_seed(0)
        first = build_model(manifest.arch, classes, manifest.canvas).to(torch_device).train()
        first.roi_heads.fg_bg_sampler.batch_size_per_image = box_batch
        models = {"torchvision": first, "bags": copy.deepcopy(first)}
        optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
        times: dict[str, list[float]] = {name: [] for name in models}
        for round_index in range(plan.rounds + 1):
            for name, model in models.items():
                seconds = step(model, optimizers[name], bags_roi_align(model) if name == "bags" else nullcontext())
                if round_index > 0:  # the first step of each allocates
                    times[name].append(seconds)
        torchvision_s, bags_s = statistics.median(times["torchvision"]), statistics.median(times["bags"])
        row = TrainStepRow(
            box_batch=box_batch, torchvision_s=round(torchvision_s, 3), bags_s=round(bags_s, 3), ratio=round(bags_s / torchvision_s, 3)
        )
        rows.append(row)
        progress(f"[{device}] train-step, box batch {box_batch}: torchvision {row.torchvision_s} s, bags {row.bags_s} s")
    section = TrainStepSection(
        run=run,
        arch=manifest.arch,
        canvas=manifest.canvas,
        batch_size=plan.batch_size,
        rounds=plan.rounds,
        torch={"torch": torch.__version__, "device": str(torch_device), "threads": torch.get_num_threads()},
        rows=rows,
    )
    section.goals = [
        Goal(
            goal=f"an iteration with the bags <= {GOAL_BAGS_FRACTION}x one with torchvision's RoIAlign, box batch {row.box_batch}",
            measured=f"{row.ratio:.2f}x",
            met=row.ratio <= GOAL_BAGS_FRACTION,
        )
        for row in rows
    ]
    return section
