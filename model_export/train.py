"""Training: approximate joint training of the RPN and the detection head, as torchvision does.

The model's loss is the sum of the RPN's (objectness, box regression) and the
head's (classification, box regression). Images are letterboxed onto the
model's canvas the way the service will present them, with augmentation.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from model_export.checkpoint import LoadedModel, load_train_state, save_checkpoint, save_train_state, train_state_path
from model_export.coco import CocoDataset, ImageRecord, open_image
from model_export.command_errors import CheckpointError
from model_export.config import TrainConfig
from model_export.roi_align_bags import bags_roi_align
from service.letterbox import PAD_VALUE, fit_scale

Target = dict[str, torch.Tensor]


class CanvasDataset(Dataset[tuple[torch.Tensor, Target]]):
    """Images letterboxed onto the canvas, as float [3, H, W] in 0..1, with their boxes on the canvas."""

    def __init__(
        self, records: list[ImageRecord], canvas: tuple[int, int], augment: bool, min_scale: float = TrainConfig.min_scale
    ) -> None:
        self.records = records
        self.canvas = canvas
        self.augment = augment
        self.min_scale = min_scale

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        record = self.records[index]
        image = open_image(record)
        boxes = record.boxes.copy()
        scale = fit_scale(image.width, image.height, self.canvas)
        if self.augment:
            scale *= random.uniform(self.min_scale, 1.0)
            image = _jitter_colours(image)
        canvas_array, boxes = _place_on_canvas(image, boxes, scale, self.canvas, self.augment)
        if self.augment:
            canvas_array, boxes = _random_flips(canvas_array, boxes)
        keep = ((boxes[:, 2] - boxes[:, 0]) >= 2) & ((boxes[:, 3] - boxes[:, 1]) >= 2)
        tensor = torch.from_numpy(np.ascontiguousarray(canvas_array)).permute(2, 0, 1).float().div_(255)
        target = {"boxes": torch.from_numpy(boxes[keep]).float(), "labels": torch.from_numpy(record.labels[keep])}
        return tensor, target


def _jitter_colours(image: Image.Image) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(random.uniform(0.75, 1.25))
    return ImageEnhance.Contrast(image).enhance(random.uniform(0.75, 1.25))


def _place_on_canvas(
    image: Image.Image, boxes: np.ndarray, scale: float, canvas: tuple[int, int], random_offset: bool
) -> tuple[np.ndarray, np.ndarray]:
    width = max(1, min(canvas[1], round(image.width * scale)))
    height = max(1, min(canvas[0], round(image.height * scale)))
    resized = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    dx = random.randint(0, canvas[1] - width) if random_offset else 0
    dy = random.randint(0, canvas[0] - height) if random_offset else 0
    out = np.full((canvas[0], canvas[1], 3), PAD_VALUE, dtype=np.uint8)
    out[dy : dy + height, dx : dx + width] = resized
    placed = boxes * np.array([width / image.width, height / image.height] * 2, dtype=np.float32)
    placed += np.array([dx, dy, dx, dy], dtype=np.float32)
    return out, placed


def _random_flips(array: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = array.shape[:2]
    if random.random() < 0.5:
        array = array[:, ::-1]
        boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
    if random.random() < 0.5:
        array = array[::-1]
        boxes = np.stack([boxes[:, 0], height - boxes[:, 3], boxes[:, 2], height - boxes[:, 1]], axis=1)
    return array, boxes.astype(np.float32)


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    images, targets = zip(*batch, strict=False)
    return list(images), list(targets)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def warmup_cosine(warmup_iters: int, total_iters: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up from 0.001, then a cosine decay to 1%."""

    def factor(iteration: int) -> float:
        if iteration < warmup_iters:
            return 0.001 + (1 - 0.001) * iteration / warmup_iters
        progress = min(1.0, (iteration - warmup_iters) / max(1, total_iters - warmup_iters))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


EpochCallback = Callable[[int, LoadedModel], dict[str, float]]


def train(
    loaded: LoadedModel,
    dataset: CocoDataset,
    out: Path,
    config: TrainConfig,
    resume_from: Path | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> dict[str, Any]:
    """Trains ``loaded.model`` in place, writing ``out`` (and its train state) after every epoch.

    With ``resume_from``, the optimizer, schedule and history saved beside that
    checkpoint are restored and training goes on from its last finished epoch.

    Returns the history: per-iteration losses and per-epoch figures.
    """
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = loaded.model
    if config.box_batch is not None:
        model.roi_heads.fg_bg_sampler.batch_size_per_image = config.box_batch
    loader = DataLoader(
        CanvasDataset(dataset.images, loaded.canvas, config.augment, config.min_scale),
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(config.seed),
        drop_last=len(dataset.images) >= config.batch_size,
    )
    total_iters = config.epochs * len(loader)
    if config.max_iters is not None:
        total_iters = min(total_iters, config.max_iters)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_iters, total_iters))
    history: dict[str, Any] = {"iterations": [], "epochs": [], "config": asdict(config)}
    start_epoch, iteration, elapsed = 0, 0, 0.0

    state = _resume_state(resume_from) if resume_from else None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch, iteration, elapsed = state["history"], state["epoch"], state["iteration"], state["elapsed_s"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])

    for epoch in range(start_epoch, config.epochs):
        if iteration >= total_iters:
            break
        started = time.monotonic()
        with bags_roi_align(model):
            iteration = _train_epoch(model, loader, optimizer, scheduler, config, epoch, iteration, total_iters, history)
        elapsed += time.monotonic() - started
        figures = on_epoch_end(epoch, loaded) if on_epoch_end else {}
        history["epochs"].append({"epoch": epoch + 1, "iteration": iteration, "elapsed_s": round(elapsed, 1), **figures})
        loaded.metadata = {"epochs": epoch + 1, "iterations": iteration, "train_time_s": round(elapsed, 1), **figures}
        save_checkpoint(out, loaded)
        save_train_state(
            out,
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": history,
                "epoch": epoch + 1,
                "iteration": iteration,
                "elapsed_s": elapsed,
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
            },
        )
    return history


def _resume_state(checkpoint: Path) -> dict[str, Any]:
    """The optimizer, schedule and progress saved beside ``checkpoint``; without them a resume would silently start over."""
    state = load_train_state(checkpoint)
    if state is None:
        raise CheckpointError(
            f"{train_state_path(checkpoint)} not found: --resume needs the training state written beside the checkpoint; "
            "to start a new run from these weights, use --init"
        )
    return state


def _train_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    epoch: int,
    iteration: int,
    total_iters: int,
    history: dict[str, Any],
) -> int:
    model.train()
    device_type = next(model.parameters()).device.type
    running: dict[str, float] = {}
    progress = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", dynamic_ncols=True)
    for images, targets in progress:
        if iteration >= total_iters:
            break
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=config.bf16):
            losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at iteration {iteration}: {_format(losses)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        iteration += 1
        values = {name: value.item() for name, value in losses.items()} | {"loss": loss.item()}
        history["iterations"].append({"iteration": iteration, **values})
        # Exponential moving averages: readable running losses in the progress bar.
        running = {k: v if k not in running else 0.95 * running[k] + 0.05 * v for k, v in values.items()}
        progress.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in running.items()} | {"lr": f"{scheduler.get_last_lr()[0]:.1e}"})
    return iteration


def _format(losses: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{name}={float(value):.4f}" for name, value in losses.items())


def plot_losses(history: dict[str, Any], path: Path) -> None:
    """Writes the loss curves (total and each part, smoothed) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = history["iterations"]
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(8, 5))
    steps = np.array([row["iteration"] for row in rows])
    for name in [k for k in rows[0] if k != "iteration"]:
        values = np.array([row[name] for row in rows])
        window = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1 :], smooth, label=name, linewidth=2 if name == "loss" else 1)
    axis.set_xlabel("iteration")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
