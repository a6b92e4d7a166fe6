from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_export.__main__ import main
from model_export.backgrounds import read_photo_folder, skimage_pool
from model_export.checkpoint import LoadedModel, save_checkpoint
from model_export.coco import load_dataset
from model_export.detections import Detections
from model_export.evaluate import coco_metrics, evaluate, format_table, write_report
from model_export.grid import CELL, GAP, PER_ROW, annotated
from model_export.synth import SynthConfig, write_dataset
from service.render import colour

CANVAS = (96, 96)


def _ground_truth_as_results(root: Path, shift: float = 0.0) -> list[dict]:
    data = json.loads((root / "annotations.json").read_text())
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": [a["bbox"][0] + shift * a["bbox"][2], *a["bbox"][1:]],
            "score": 1.0,
        }
        for a in data["annotations"]
    ]


def test_ground_truth_scores_perfectly(small_dataset: Path) -> None:
    report = coco_metrics(load_dataset(small_dataset), _ground_truth_as_results(small_dataset))
    assert report.map == pytest.approx(1.0)
    assert report.map50 == pytest.approx(1.0)


def test_shifted_boxes_score_less(small_dataset: Path) -> None:
    dataset = load_dataset(small_dataset)
    report = coco_metrics(dataset, _ground_truth_as_results(small_dataset, shift=0.3))
    assert 0.0 < report.map < 0.9
    # A 30% shift keeps IoU at about 0.54: still a match at 0.5.
    assert report.map50 > report.map


def test_no_detections_score_zero(small_dataset: Path) -> None:
    report = coco_metrics(load_dataset(small_dataset), [])
    assert report.map == 0.0 and report.map50 == 0.0


def test_report_files(small_dataset: Path, tmp_path: Path) -> None:
    report = coco_metrics(load_dataset(small_dataset), _ground_truth_as_results(small_dataset, shift=0.1))
    write_report(report, tmp_path / "eval.json", tmp_path / "pr.png")
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert set(saved) >= {"map", "map50", "per_class"}
    assert list(saved["per_class"]) == load_dataset(small_dataset).categories[1:]
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mAP@.5" in format_table(report)


def test_per_class_ap_belongs_to_its_class(small_dataset: Path) -> None:
    # Ground truth for every class but one: that class scores 0 under its own name, every other 1.
    dataset = load_dataset(small_dataset)
    missing = dataset.category_ids[1]
    results = [r for r in _ground_truth_as_results(small_dataset) if r["category_id"] != missing]
    report = coco_metrics(dataset, results)
    present = {dataset.categories[dataset.category_ids.index(r["category_id"])] for r in results}
    assert len(present) >= 5 and report.per_class[dataset.categories[1]] == 0.0
    assert {name: ap for name, ap in report.per_class.items() if name in present} == pytest.approx(dict.fromkeys(present, 1.0))


def _three_detections(canvases: np.ndarray) -> list[Detections]:
    """Every image: detections at scores 0.9, 0.5 and 0.2; two of them count as false alarms at the default 0.5."""
    boxes = np.array([[10, 10, 40, 40], [20, 20, 60, 50], [5, 5, 15, 15]], dtype=np.float32)
    scores = np.array([0.9, 0.5, 0.2], dtype=np.float32)
    return [Detections(boxes, scores, np.array([1, 2, 3])) for _ in canvases]


@pytest.fixture(scope="module")
def half_empty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("half-empty")
    write_dataset(root, SynthConfig(count=10, seed=6, empty_fraction=0.5))
    return root


@pytest.fixture(scope="module")
def negatives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("negatives")
    for path in skimage_pool(held_out=True).paths[:3]:
        shutil.copy(path, root / path.name)
    return root


def _empty_images(root: Path) -> int:
    data = json.loads((root / "annotations.json").read_text())
    return len({i["id"] for i in data["images"]} - {a["image_id"] for a in data["annotations"]})


def test_false_alarms_are_counted_on_images_without_objects_only(half_empty: Path, negatives: Path) -> None:
    empty = _empty_images(half_empty)
    assert 0 < empty < 10, "the set should hold images with and without objects"
    report = evaluate(_three_detections, load_dataset(half_empty), CANVAS, negatives=read_photo_folder(negatives, "--negatives"))
    on_set, on_folder = report.false_alarms["dataset"], report.false_alarms["negatives"]
    assert (on_set.images, on_set.detections, on_set.per_image) == (empty, 2 * empty, 2.0)
    assert (on_folder.images, on_folder.detections, on_folder.per_image) == (3, 6, 2.0)
    assert report.detections == 30, "the mAP still scores every detection"


def test_false_alarm_score_sets_what_counts(half_empty: Path) -> None:
    strict = evaluate(_three_detections, load_dataset(half_empty), CANVAS, false_alarm_score=0.6)
    assert strict.false_alarms["dataset"].per_image == 1.0 and strict.false_alarms["dataset"].score_threshold == 0.6
    assert "negatives" not in strict.false_alarms


def test_false_alarms_reach_the_json_and_the_table(half_empty: Path, negatives: Path, tmp_path: Path) -> None:
    report = evaluate(_three_detections, load_dataset(half_empty), CANVAS, negatives=read_photo_folder(negatives, "--negatives"))
    write_report(report, tmp_path / "eval.json", None)
    saved = json.loads((tmp_path / "eval.json").read_text())["false_alarms"]
    assert saved["negatives"] == {"images": 3, "detections": 6, "per_image": 2.0, "score_threshold": 0.5}
    assert saved["dataset"]["per_image"] == 2.0
    table = format_table(report)
    assert "false alarms per image at score >= 0.5" in table and "(6 detections on 3 images)" in table


def test_a_set_without_empty_images_has_no_false_alarm_figure(tmp_path: Path) -> None:
    write_dataset(tmp_path, SynthConfig(count=3, seed=1, empty_fraction=0.0))
    report = evaluate(_three_detections, load_dataset(tmp_path), CANVAS)
    assert report.false_alarms["dataset"].images == 0 and report.false_alarms["dataset"].per_image is None
    assert "no image without objects" in format_table(report)


def test_evaluate_command_reports_false_alarms_of_a_checkpoint(
    half_empty: Path, negatives: Path, small_model: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, small_model)
    data = tmp_path / "data"
    write_dataset(data, SynthConfig(count=4, seed=6, empty_fraction=0.5))
    # The small model knows 3 classes: the set is relabelled to them so that the classes match.
    annotations = json.loads((data / "annotations.json").read_text())
    annotations["categories"] = [{"id": i, "name": name} for i, name in enumerate(small_model.categories[1:], start=1)]
    annotations["annotations"] = [a for a in annotations["annotations"] if a["category_id"] <= 3]
    (data / "annotations.json").write_text(json.dumps(annotations))
    command = ["evaluate", "--data", str(data), "--checkpoint", str(checkpoint), "--negatives", str(negatives)]
    grid = tmp_path / "grid.png"
    assert main([*command, "--json", str(tmp_path / "eval.json"), "--false-alarm-score", "0.05", "--grid", str(grid)]) == 0
    with Image.open(grid) as picture:  # a row of the data set's images, one of the negatives
        assert picture.size == (PER_ROW * (CELL + GAP) - GAP, 2 * (CELL + GAP) - GAP)
    saved = json.loads((tmp_path / "eval.json").read_text())["false_alarms"]
    assert saved["negatives"]["images"] == 3 and saved["negatives"]["score_threshold"] == 0.05
    # A random model fires everywhere at a low score: the figure is real detections, not a placeholder.
    assert saved["negatives"]["detections"] > 0
    assert "false alarms per image" in capsys.readouterr().out


@pytest.mark.parametrize("problem", ["missing", "empty", "unreadable"])
def test_a_bad_negatives_folder_is_refused_by_name(
    small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str
) -> None:
    folder = tmp_path / "negatives"
    if problem != "missing":
        folder.mkdir()
    if problem == "unreadable":
        (folder / "broken.png").write_bytes(b"not a png")
    # The folder is checked before the model loads: the checkpoint need not exist.
    command = ["evaluate", "--data", str(small_dataset), "--checkpoint", str(tmp_path / "none.pt"), "--negatives", str(folder)]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert f"{folder}:" in error and "--negatives" in error


def test_unreadable_negatives_are_skipped_with_a_warning(negatives: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "negatives"
    shutil.copytree(negatives, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    with caplog.at_level(logging.WARNING):
        images = read_photo_folder(folder, "--negatives")
    assert len(images) == 3
    assert "skipped 1 unreadable image(s) of 4" in caplog.text and "broken.jpg" in caplog.text


def test_the_grid_draws_the_detections_at_its_threshold_only() -> None:
    grey = Image.new("RGB", CANVAS, (114, 114, 114))  # canvas-sized: the canvas boxes are the image's
    names = ["__background__", "circle", "triangle", "square"]
    cell = annotated(_three_detections, grey, CANVAS, names, score_threshold=0.5)
    assert cell.getpixel((10, 25)) == colour(1), "the 0.9 box's left edge"
    assert cell.getpixel((20, 45)) == colour(2), "the 0.5 box's left edge: at the threshold, drawn"
    assert cell.getpixel((5, 12)) == (114, 114, 114), "the 0.2 box is below the threshold"
    assert grey.getpixel((10, 25)) == (114, 114, 114), "the image given is left as it was"
