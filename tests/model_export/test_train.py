from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn.modules.module import register_module_forward_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torchvision.ops import MultiScaleRoIAlign

from model_export.__main__ import main
from model_export.architectures import COMPACT_ARCH, build_model
from model_export.checkpoint import CheckpointError, LoadedModel, load_checkpoint, load_train_state, save_checkpoint
from model_export.coco import CocoDataset, load_dataset
from model_export.roi_align_bags import BagsMultiScaleRoIAlign
from model_export.train import CanvasDataset, TrainConfig, train

CANVAS = (256, 256)
# Resume runs two short epochs; a small canvas keeps them quick.
RESUME_CANVAS = (128, 128)
# Not square, so that a box mapped with the wrong side (a vertical flip by the width) leaves the canvas.
WIDE_CANVAS = (192, 288)


def _model(dataset: CocoDataset, canvas: tuple[int, int] = CANVAS) -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel(build_model(COMPACT_ARCH, len(dataset.categories), canvas), COMPACT_ARCH, dataset.categories, canvas)


def test_augmented_boxes_stay_on_the_canvas(small_dataset: Path) -> None:
    dataset = CanvasDataset(load_dataset(small_dataset).images, WIDE_CANVAS, augment=True)
    height, width = WIDE_CANVAS
    seen = 0
    for _ in range(3):  # flips and offsets are random: several passes see each image placed differently
        for index in range(len(dataset)):
            image, target = dataset[index]
            assert image.shape == (3, *WIDE_CANVAS)
            boxes = target["boxes"]
            assert len(boxes) == len(target["labels"])
            seen += len(boxes)
            if len(boxes):
                assert (boxes[:, 0] >= -1e-3).all() and (boxes[:, 2] <= width + 1e-3).all(), boxes
                assert (boxes[:, 1] >= -1e-3).all() and (boxes[:, 3] <= height + 1e-3).all(), boxes
                assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert seen >= 50, "too few boxes to judge"


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bfloat16-autocast"])
def test_loss_decreases_on_a_small_set(small_dataset: Path, tmp_path: Path, bf16: bool) -> None:
    dataset = load_dataset(small_dataset)
    loaded = _model(dataset)
    config = TrainConfig(epochs=6, batch_size=4, lr=2e-3, warmup_iters=2, workers=0, augment=False, bf16=bf16)
    history = train(loaded, dataset, tmp_path / "model.pt", config)
    losses = [row["loss"] for row in history["iterations"]]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, f"loss went from {first:.3f} to {last:.3f}"
    # Autocast computes in bfloat16 but keeps the weights, and so the checkpoint, in float32.
    assert {p.dtype for p in load_checkpoint(tmp_path / "model.pt").model.parameters()} == {torch.float32}


def test_training_pools_with_bags_samples_box_batch_rois_and_leaves_torchvision_pooler(small_dataset: Path, tmp_path: Path) -> None:
    dataset = load_dataset(small_dataset)
    loaded = _model(dataset, RESUME_CANVAS)
    original = loaded.model.roi_heads.box_roi_pool
    poolers: list[type] = []
    head_rois: list[int] = []

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _: object) -> None:
        if isinstance(module, MultiScaleRoIAlign):
            poolers.append(type(module))
        if module is loaded.model.roi_heads.box_head:
            head_rois.append(inputs[0].shape[0])

    hook = register_module_forward_hook(record)  # a torch hook: it observes every module's call, nothing is replaced
    try:
        train(loaded, dataset, tmp_path / "model.pt", TrainConfig(epochs=1, batch_size=4, workers=0, max_iters=2, box_batch=16))
    finally:
        hook.remove()

    assert poolers == [BagsMultiScaleRoIAlign] * 2, "every training step pools with roi_align_by_bags"
    assert head_rois == [4 * 16] * 2, "the box head sees box_batch RoIs of each image"
    assert loaded.model.roi_heads.box_roi_pool is original, "evaluation and export get torchvision's RoIAlign back"


def _assert_same_state(got: Any, saved: Any, where: str = "optimizer") -> None:
    """Equal nested optimizer/scheduler state: dicts, lists and tensors compared exactly."""
    if isinstance(saved, dict):
        assert set(got) == set(saved), where
        for key in saved:
            _assert_same_state(got[key], saved[key], f"{where}[{key!r}]")
    elif isinstance(saved, list | tuple):
        assert len(got) == len(saved), where
        for index, (a, b) in enumerate(zip(got, saved, strict=True)):
            _assert_same_state(a, b, f"{where}[{index}]")
    elif isinstance(saved, torch.Tensor):
        assert torch.equal(got, saved), where
    else:
        assert got == saved, where


def test_resume_continues_the_saved_optimizer_and_runs_only_the_remaining_epochs(small_dataset: Path, tmp_path: Path) -> None:
    full = load_dataset(small_dataset)
    dataset = replace(full, images=full.images[:8])  # two iterations of four images an epoch: quick, and more than one step
    config = TrainConfig(epochs=2, batch_size=4, workers=0, augment=False)
    out = tmp_path / "model.pt"
    train(_model(dataset, RESUME_CANVAS), dataset, out, replace(config, epochs=1))
    saved = load_train_state(out)
    assert saved is not None and saved["epoch"] == 1
    per_epoch = saved["iteration"]

    # The optimizer as the resumed run's first step finds it: it must be the one saved after epoch 1.
    first_step: list[dict[str, Any]] = []
    epochs_run: list[int] = []

    def record_first_step(optimizer: torch.optim.Optimizer, *_: object) -> None:
        if not first_step:
            first_step.append(copy.deepcopy(optimizer.state_dict()))

    def record_epoch(epoch: int, _: LoadedModel) -> dict[str, float]:
        epochs_run.append(epoch + 1)
        return {}

    hook = register_optimizer_step_pre_hook(record_first_step)  # a torch hook: it observes, nothing is replaced
    try:
        history = train(load_checkpoint(out), dataset, tmp_path / "more.pt", config, resume_from=out, on_epoch_end=record_epoch)
    finally:
        hook.remove()

    assert epochs_run == [2], "only the epoch after the saved one runs"
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    _assert_same_state(first_step[0], saved["optimizer"])
    final = load_train_state(tmp_path / "more.pt")
    assert final is not None and final["iteration"] == 2 * per_epoch
    assert final["scheduler"]["last_epoch"] == 2 * per_epoch, "the learning-rate schedule goes on from the saved step"
    assert {int(state["step"]) for state in final["optimizer"]["state"].values()} == {2 * per_epoch}
    assert load_checkpoint(tmp_path / "more.pt").metadata["epochs"] == 2


def test_resume_without_its_train_state_is_refused(small_dataset: Path, tmp_path: Path) -> None:
    dataset = load_dataset(small_dataset)
    loaded = _model(dataset, RESUME_CANVAS)
    save_checkpoint(tmp_path / "model.pt", loaded)  # weights only: nothing to resume from
    with pytest.raises(CheckpointError, match=r"model\.pt\.train-state\.pt.*not found"):
        train(loaded, dataset, tmp_path / "more.pt", TrainConfig(epochs=2, workers=0, max_iters=1), resume_from=tmp_path / "model.pt")
    assert not (tmp_path / "more.pt").exists()


def test_cli_trains_writes_checkpoint_and_loss_plot(small_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.pt"
    code = main(
        [
            "train",
            "--data",
            str(small_dataset),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--max-iters",
            "2",
            "--batch-size",
            "2",
            "--workers",
            "0",
            "--canvas",
            "256x256",
        ]
    )
    assert code == 0
    loaded = load_checkpoint(out)
    assert loaded.arch == COMPACT_ARCH and loaded.canvas == CANVAS
    assert out.with_suffix(".loss.png").is_file()


def test_checkpoint_with_wrong_class_count_is_refused(small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = load_dataset(small_dataset)
    out = tmp_path / "model.pt"
    train(_model(dataset), dataset, out, TrainConfig(epochs=1, batch_size=4, workers=0, max_iters=1))
    with pytest.raises(CheckpointError, match=r"box predictor has 8 classes .* but 3 categories"):
        load_checkpoint(out, categories=["__background__", "a", "b"])
    categories = tmp_path / "classes.txt"
    categories.write_text("a\nb\n")
    code = main(
        [
            "train",
            "--data",
            str(small_dataset),
            "--out",
            str(tmp_path / "x.pt"),
            "--init",
            str(out),
            "--categories",
            str(categories),
            "--arch",
            COMPACT_ARCH,
        ]
    )
    assert code == 2
    assert "8 classes" in capsys.readouterr().err


def test_pretrained_weights_are_named_by_torchvision_enums(tmp_path: Path) -> None:
    from model_export.checkpoint import load_pretrained, read_categories

    with pytest.raises(CheckpointError, match=r"fasterrcnn_resnet50_fpn has no weights 'IMAGENET'.*COCO_V1"):
        load_pretrained("fasterrcnn_resnet50_fpn", "IMAGENET", None, CANVAS)
    with pytest.raises(CheckpointError, match="no torchvision pretrained weights for architecture 'fasterrcnn_compact_fpn'"):
        load_pretrained(COMPACT_ARCH, "COCO_V1", None, CANVAS)
    names = tmp_path / "names.json"
    names.write_text('["cat", "dog"]')
    assert read_categories(names) == ["__background__", "cat", "dog"]
    names.write_text("")
    with pytest.raises(CheckpointError, match="non-empty list of class names"):
        read_categories(names)
