"""Checkpoints: the project's format, plain torchvision state_dicts, and torchvision's pretrained weights.

A project checkpoint is a dict saved with ``torch.save``::

    {"arch": str, "categories": [str, ...], "state_dict": {...},
     "canvas": [H, W], "training": {...}}

``categories[0]`` is ``"__background__"``; label id i names ``categories[i]``.
Training state for resuming (optimizer, schedule, history) lives beside it in
``<checkpoint>.train-state.pt`` so that the checkpoint itself stays small.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.models import get_model_weights
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

from model_export.architectures import ARCHITECTURES, build_model
from model_export.command_errors import CheckpointError
from model_export.config import DEFAULT_CANVAS

BACKGROUND = "__background__"


@dataclass
class LoadedModel:
    model: FasterRCNN
    arch: str
    categories: list[str]
    canvas: tuple[int, int]
    metadata: dict[str, Any] = field(default_factory=dict)


def train_state_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".train-state.pt")


def read_categories(path: Path) -> list[str]:
    """Class names from a JSON list or a text file with one name per line; the background is added first if missing."""
    if not path.is_file():
        raise CheckpointError(f"{path}: categories file not found")
    text = path.read_text()
    try:
        names = json.loads(text)
    except json.JSONDecodeError:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: categories should be a non-empty list of class names")
    return names if names[0] == BACKGROUND else [BACKGROUND, *names]


def save_checkpoint(path: Path, loaded: LoadedModel) -> None:
    """Writes the checkpoint atomically: a crash leaves the previous file whole."""
    payload = {
        "arch": loaded.arch,
        "categories": loaded.categories,
        "canvas": list(loaded.canvas),
        "state_dict": loaded.model.state_dict(),
        "training": loaded.metadata,
    }
    _atomic_save(payload, path)


def _atomic_save(payload: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    partial.replace(path)


def save_train_state(checkpoint: Path, state: dict[str, Any]) -> None:
    _atomic_save(state, train_state_path(checkpoint))


def load_train_state(checkpoint: Path) -> dict[str, Any] | None:
    path = train_state_path(checkpoint)
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


def _num_classes_in(state_dict: dict[str, torch.Tensor]) -> int | None:
    weight = state_dict.get("roi_heads.box_predictor.cls_score.weight")
    return None if weight is None else int(weight.shape[0])


def load_checkpoint(
    path: Path,
    arch: str | None = None,
    categories: list[str] | None = None,
    canvas: tuple[int, int] | None = None,
) -> LoadedModel:
    """Loads a project checkpoint, or a plain torchvision state_dict given ``arch`` and ``categories``.

    Arguments given here override what the checkpoint says (a user may serve a
    model on another canvas than it was trained on).
    """
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a PyTorch checkpoint: {error}") from error
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a dict (a checkpoint or a state_dict), got {type(payload).__name__}")

    if "state_dict" in payload:
        state_dict, metadata = payload["state_dict"], payload.get("training", {})
        arch = arch or payload.get("arch")
        categories = categories or payload.get("categories")
        if canvas is None and payload.get("canvas"):
            canvas = (int(payload["canvas"][0]), int(payload["canvas"][1]))
    else:
        state_dict, metadata = payload, {}
    if arch is None or categories is None:
        raise CheckpointError(f"{path}: a plain state_dict needs --arch and --categories (architecture and class names)")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: unknown architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
    found = _num_classes_in(state_dict)
    if found is not None and found != len(categories):
        raise CheckpointError(
            f"{path}: the checkpoint's box predictor has {found} classes (background included) but {len(categories)} categories were given"
        )
    canvas = canvas or DEFAULT_CANVAS
    model = build_model(arch, len(categories), canvas)
    _load_state(model, state_dict, path, arch)
    return LoadedModel(model, arch, list(categories), (int(canvas[0]), int(canvas[1])), metadata)


def _load_state(model: FasterRCNN, state_dict: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches (first: {'; '.join(mismatched[:3])})")
        raise CheckpointError(f"{path}: the weights do not fit architecture {arch}: {'; '.join(problems)}")
    model.load_state_dict(state_dict)


def load_pretrained(arch: str, weights_name: str, categories: list[str] | None, canvas: tuple[int, int]) -> LoadedModel:
    """torchvision's pretrained weights (for example COCO_V1), downloaded by torchvision on first use.

    With ``categories`` other than the weights' own, the box predictor is replaced
    by a fresh one of the right size, for fine-tuning.
    """
    if arch not in ARCHITECTURES or arch.endswith("compact_fpn"):
        raise CheckpointError(f"no torchvision pretrained weights for architecture {arch!r}")
    try:
        weights = get_model_weights(arch)[weights_name]
    except KeyError as error:
        raise CheckpointError(f"{arch} has no weights {weights_name!r}; it has {[w.name for w in get_model_weights(arch)]}") from error
    from torchvision.models import get_model

    model = get_model(arch, weights=weights, min_size=min(canvas), max_size=max(canvas))
    weight_categories = list(weights.meta["categories"])
    if categories and categories != weight_categories:
        in_features = model.roi_heads.box_predictor.cls_score.in_features
        model.roi_heads.box_predictor = FastRCNNPredictor(in_features, len(categories))
    else:
        categories = weight_categories
    return LoadedModel(model, arch, categories, canvas, {"pretrained": f"{arch}:{weights_name}"})
