"""The embedded default model: its checkpoint, its model card, and its exported package."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from model_export.checkpoint import load_checkpoint
from model_export.coco import load_dataset
from model_export.detections import Detections
from model_export.evaluate import eager_predictor, evaluate
from model_export.export import eager_thresholds
from model_export.package import OnnxPredictor
from model_export.parity import ParityReport, compare_detections
from model_export.synth import SynthConfig, generate_image, write_dataset
from service.agreement import box_iou
from service.letterbox import letterbox

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "default"
HELD_OUT_SEED = 3  # the model card's test set; training used seed 1 and validation seed 2


@pytest.fixture(scope="module")
def default_model():  # type: ignore[no-untyped-def]
    return load_checkpoint(DEFAULT / "model.pt")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("held-out")
    write_dataset(root, SynthConfig(count=120, seed=HELD_OUT_SEED))
    return root


def test_checkpoint_is_small_and_documented(default_model) -> None:  # type: ignore[no-untyped-def]
    assert (DEFAULT / "model.pt").stat().st_size <= 20 * 1024 * 1024
    card = (DEFAULT / "README.md").read_text()
    for needle in ("mAP@[.5:.95]", "mAP@.5", "python -m model_export train", "--seed", "parameters", "ms per image"):
        assert needle in card, needle
    assert default_model.categories[0] == "__background__" and len(default_model.categories) >= 7


def test_detects_the_objects_of_a_new_scene(default_model) -> None:  # type: ignore[no-untyped-def]
    found, total = 0, 0
    predict = eager_predictor(default_model.model)
    for index in range(6):
        image, objects = generate_image(seed=777, index=index, empty_fraction=0.0)
        canvas, placement = letterbox(image, default_model.canvas)
        detections = predict(canvas[None])[0]
        keep = detections.scores > 0.5
        boxes = placement.boxes_to_image(detections.boxes[keep].astype(np.float64))
        truth = np.array([[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objects)]).reshape(-1, 4)
        labels = np.array([o["category_id"] for o in objects])
        if len(truth) and len(boxes):
            iou = box_iou(truth, boxes) * (labels[:, None] == detections.labels[keep][None, :])
            found += int((iou.max(axis=1) >= 0.5).sum())
        total += len(truth)
    assert total > 10 and found >= 0.8 * total, f"found {found} of {total} objects"


def _scenes(canvas: tuple[int, int], count: int) -> np.ndarray:
    """New scenes letterboxed onto the canvas; every fourth one blank."""
    images = []
    for index in range(count):
        image, _ = generate_image(seed=555, index=index, empty_fraction=0.0)
        images.append(letterbox(image if index % 4 else image.point(lambda _: 114), canvas)[0])
    return np.stack(images)


def _eager_alone(loaded, canvases: np.ndarray, score_threshold: float, iou_threshold: float, cap: int) -> list[Detections]:  # type: ignore[no-untyped-def]
    with eager_thresholds(loaded.model, score_threshold, iou_threshold, cap):
        predict = eager_predictor(loaded.model)
        return [predict(canvases[i : i + 1])[0] for i in range(len(canvases))]


def test_package_matches_the_eager_model_at_every_batch_size(default_model) -> None:  # type: ignore[no-untyped-def]
    canvases = _scenes(default_model.canvas, 16)
    runner = OnnxPredictor(DEFAULT / "package")
    threshold, iou = 0.3, runner.manifest.iou_threshold
    reference = _eager_alone(default_model, canvases, threshold, iou, runner.manifest.max_detections)
    counts = [len(r.scores) for r in reference]
    assert 0 in counts and max(counts) >= 5, counts
    for batch in (1, 2, 5, 16):
        report = ParityReport()
        got: list[Detections] = []
        for start in range(0, len(canvases), batch):
            got += runner.run(canvases[start : start + batch], threshold, iou)
        for ref, out in zip(reference, got, strict=True):
            report.add(compare_detections(ref, out, threshold, runner.manifest.max_detections))
        assert report.matched_fraction >= 0.99, f"batch {batch}: {report.to_json()}"


def test_package_matches_the_eager_model_at_a_second_iou_threshold(default_model) -> None:  # type: ignore[no-untyped-def]
    canvases = _scenes(default_model.canvas, 8)
    runner = OnnxPredictor(DEFAULT / "package")
    cap, default_iou, strict_iou = runner.manifest.max_detections, runner.manifest.iou_threshold, 0.3
    threshold = 0.05  # low: overlapping candidates of one object survive the score filter, and NMS decides
    at_default = runner.run(canvases, threshold, default_iou)
    at_strict = runner.run(canvases, threshold, strict_iou)
    counts = (sum(len(d.scores) for d in at_strict), sum(len(d.scores) for d in at_default))
    assert counts[0] < counts[1], f"IoU {strict_iou} kept as many boxes as IoU {default_iou}: {counts}"
    report = ParityReport()
    for ref, got in zip(_eager_alone(default_model, canvases, threshold, strict_iou, cap), at_strict, strict=True):
        report.add(compare_detections(ref, got, threshold, cap))
    assert report.compared >= counts[0] and report.matched_fraction >= 0.99, report.to_json()


def test_exported_map_equals_eager_map_on_held_out_data(default_model, held_out: Path) -> None:  # type: ignore[no-untyped-def]
    dataset = load_dataset(held_out)
    eager = evaluate(eager_predictor(default_model.model), dataset, default_model.canvas)
    exported = evaluate(OnnxPredictor(DEFAULT / "package", score_threshold=0.05), dataset, default_model.canvas)
    assert abs(exported.map - eager.map) <= 0.002, (exported.map, eager.map)
    assert abs(exported.map50 - eager.map50) <= 0.002, (exported.map50, eager.map50)
    assert eager.map > 0.5


def test_package_manifest_names_the_checkpoint_classes(default_model) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads((DEFAULT / "package" / "model.json").read_text())
    assert manifest["categories"] == default_model.categories
    assert manifest["canvas"] == list(default_model.canvas)
    # The manifest describes the graph beside it (its parity is measured above, not read back from here).
    assert manifest["onnx_sha256"] == hashlib.sha256((DEFAULT / "package" / "model.onnx").read_bytes()).hexdigest()
    assert manifest["parity"]["compared"] > 0
