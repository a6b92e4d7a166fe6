from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_export.__main__ import main
from model_export.architectures import COMPACT_ARCH, build_model
from model_export.checkpoint import CheckpointError, LoadedModel, load_checkpoint, train_state_path
from model_export.coco import load_dataset
from model_export.train import CanvasDataset, TrainConfig, train

CANVAS = (256, 256)


def _model(dataset) -> LoadedModel:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return LoadedModel(build_model(COMPACT_ARCH, len(dataset.categories), CANVAS), COMPACT_ARCH, dataset.categories, CANVAS)


def test_augmented_boxes_stay_on_the_canvas(small_dataset: Path) -> None:
    dataset = CanvasDataset(load_dataset(small_dataset).images, CANVAS, augment=True)
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert image.shape == (3, *CANVAS)
        boxes = target["boxes"]
        assert len(boxes) == len(target["labels"])
        if len(boxes):
            assert (boxes[:, 0] >= -1e-3).all() and (boxes[:, 2] <= CANVAS[1] + 1e-3).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


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


def test_resume_goes_on_from_the_saved_epoch(small_dataset: Path, tmp_path: Path) -> None:
    dataset = load_dataset(small_dataset)
    out = tmp_path / "model.pt"
    train(_model(dataset), dataset, out, TrainConfig(epochs=1, batch_size=4, workers=0, augment=False))
    assert train_state_path(out).is_file()
    resumed = load_checkpoint(out)
    history = train(resumed, dataset, tmp_path / "more.pt", TrainConfig(epochs=2, batch_size=4, workers=0, augment=False), resume_from=out)
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert load_checkpoint(tmp_path / "more.pt").metadata["epochs"] == 2


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
