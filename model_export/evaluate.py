"""COCO evaluation with pycocotools: mAP@[.5:.95], mAP@.5, per-class AP, a precision-recall plot; and false alarms.

A false alarm is a detection at ``false_alarm_score`` or above on an image that holds no object: the data set's
images without annotations, and the photos of a folder of negatives (``evaluate --negatives``). They are counted
per image, the figure a user of the service meets on a photo holding nothing the model knows.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from model_export.calibration import ImageSet
from model_export.coco import CocoDataset, DatasetError, ImageRecord, open_image
from model_export.config import EvaluateConfig
from model_export.detections import BatchPredictor, Detections
from service.letterbox import letterbox


@dataclass(frozen=True)
class FalseAlarms:
    """Detections at ``score_threshold`` or above on ``images`` images that hold no object: each one is a false alarm."""

    images: int
    detections: int
    score_threshold: float

    @property
    def per_image(self) -> float | None:
        return self.detections / self.images if self.images else None

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, "detections": self.detections, "per_image": self.per_image, "score_threshold": self.score_threshold}


@dataclass
class EvalReport:
    map: float
    map50: float
    per_class: dict[str, float]
    images: int
    detections: int
    # pycocotools' precision array [IoU thresholds, recall points, classes, areas, max dets].
    precision: np.ndarray = field(repr=False)
    # mAP@[.5:.95] by object area: small (< 32^2 px), medium, large (> 96^2 px); -1 where there are none.
    by_area: dict[str, float] = field(default_factory=dict)
    # By where the empty images come from: "dataset" (its images without annotations), "negatives" (a folder).
    false_alarms: dict[str, FalseAlarms] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "map": self.map,
            "map50": self.map50,
            "per_class": self.per_class,
            "by_area": self.by_area,
            "images": self.images,
            "detections": self.detections,
            "false_alarms": {source: alarms.to_json() for source, alarms in self.false_alarms.items()},
        }


def _batches(records: Sequence[ImageRecord], size: int) -> Iterator[Sequence[ImageRecord]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def predict_dataset(predict: BatchPredictor, dataset: CocoDataset, canvas: tuple[int, int], batch_size: int = 8) -> list[dict[str, Any]]:
    """Runs ``predict`` over the data set; returns COCO result dicts with boxes in image pixels."""
    results: list[dict[str, Any]] = []
    progress = tqdm(total=len(dataset.images), desc="evaluate", unit="img", leave=False)
    for records in _batches(dataset.images, batch_size):
        placed = [letterbox(open_image(record), canvas) for record in records]
        outputs = predict(np.stack([array for array, _ in placed]))
        for record, (_, where), detections in zip(records, placed, outputs, strict=False):
            boxes = where.boxes_to_image(detections.boxes.astype(np.float64))
            for box, score, label in zip(boxes, detections.scores, detections.labels, strict=False):
                results.append(
                    {
                        "image_id": record.image_id,
                        "category_id": dataset.category_ids[int(label)],
                        "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                        "score": float(score),
                    }
                )
        progress.update(len(records))
    progress.close()
    return results


def coco_metrics(dataset: CocoDataset, results: list[dict[str, Any]]) -> EvalReport:
    """Scores COCO-format results against the data set's annotations."""
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(dataset.annotations_path))
        names = dataset.categories[1:]
        if not results:
            precision = np.zeros((10, 101, len(names), 4, 3))
            return EvalReport(0.0, 0.0, dict.fromkeys(names, 0.0), len(dataset.images), 0, precision)
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
        evaluation.params.catIds = dataset.category_ids[1:]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"]
    per_class = {name: _mean_valid(precision[:, :, k, 0, -1]) for k, name in enumerate(names)}
    by_area = {area: round(float(evaluation.stats[i]), 4) for i, area in ((3, "small"), (4, "medium"), (5, "large"))}
    return EvalReport(
        float(evaluation.stats[0]), float(evaluation.stats[1]), per_class, len(dataset.images), len(results), precision, by_area
    )


def _mean_valid(values: np.ndarray) -> float:
    # pycocotools marks classes absent from the ground truth with -1.
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else math.nan


def format_table(report: EvalReport) -> str:
    lines = [f"{'class':<20}{'AP':>8}", "-" * 28]
    lines += [f"{name:<20}{ap:>8.3f}" for name, ap in report.per_class.items()]
    lines += ["-" * 28, f"{'mAP@[.5:.95]':<20}{report.map:>8.3f}", f"{'mAP@.5':<20}{report.map50:>8.3f}"]
    lines += [f"{'mAP ' + area:<20}{value:>8.3f}" for area, value in report.by_area.items()]
    lines.append(f"({report.images} images, {report.detections} detections)")
    return "\n".join(lines + _false_alarm_lines(report.false_alarms))


def _false_alarm_lines(false_alarms: dict[str, FalseAlarms]) -> list[str]:
    if not false_alarms:
        return []
    threshold = next(iter(false_alarms.values())).score_threshold
    lines = ["-" * 28, f"false alarms per image at score >= {threshold:g}, on images holding no object:"]
    for source, alarms in false_alarms.items():
        if alarms.per_image is None:
            lines.append(f"{source:<20}{'-':>8}  (no image without objects)")
        else:
            lines.append(f"{source:<20}{alarms.per_image:>8.3f}  ({alarms.detections} detections on {alarms.images} images)")
    return lines


def plot_precision_recall(report: EvalReport, path: Path) -> None:
    """One precision-recall curve per class at IoU 0.5 (all areas, 100 detections)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recall = np.linspace(0, 1, report.precision.shape[1])
    figure, axis = plt.subplots(figsize=(7, 5))
    for k, name in enumerate(report.per_class):
        precision = report.precision[0, :, k, 0, -1]
        if (precision > -1).any():
            axis.plot(recall, np.clip(precision, 0, 1), label=f"{name} (AP50 {_mean_valid(precision):.2f})")
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_title(f"Precision-recall at IoU 0.5; mAP@[.5:.95] {report.map:.3f}, mAP@.5 {report.map50:.3f}")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.grid(True, alpha=0.3)
    axis.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(report: EvalReport, json_path: Path | None, plot_path: Path | None) -> None:
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report.to_json(), indent=2))
    if plot_path is not None:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot_precision_recall(report, plot_path)


def eager_predictor(model: Any) -> BatchPredictor:
    """Runs a torchvision detection model in eval mode on canvases."""
    import torch

    model.eval()

    def predict(canvases: np.ndarray) -> list[Detections]:
        images = [torch.from_numpy(c).permute(2, 0, 1).float().div(255) for c in canvases]
        with torch.inference_mode():
            outputs = model(images)
        return [Detections(o["boxes"].numpy(), o["scores"].numpy(), o["labels"].numpy()) for o in outputs]

    return predict


def evaluate(
    predict: BatchPredictor,
    dataset: CocoDataset,
    canvas: tuple[int, int],
    batch_size: int = EvaluateConfig.batch_size,
    model_categories: list[str] | None = None,
    negatives: ImageSet | None = None,
    false_alarm_score: float = EvaluateConfig.false_alarm_score,
) -> EvalReport:
    """COCO metrics of a model on a data set, and its false alarms on the set's images without objects and on
    ``negatives`` (photos holding none). The model's class names must be the data set's, in order."""
    if model_categories is not None and model_categories[1:] != dataset.categories[1:]:
        raise DatasetError(
            f"{dataset.annotations_path}: the model's classes {model_categories[1:]} differ from the data set's {dataset.categories[1:]}"
        )
    results = predict_dataset(predict, dataset, canvas, batch_size)
    report = coco_metrics(dataset, results)
    report.false_alarms["dataset"] = dataset_false_alarms(dataset, results, false_alarm_score)
    if negatives is not None:
        report.false_alarms["negatives"] = folder_false_alarms(predict, negatives, canvas, batch_size, false_alarm_score)
    return report


def dataset_false_alarms(dataset: CocoDataset, results: list[dict[str, Any]], score_threshold: float) -> FalseAlarms:
    """False alarms on the data set's images that hold no object (crowd regions aside), from its COCO results (``predict_dataset``)."""
    empty = {record.image_id for record in dataset.images if len(record.boxes) == 0}
    found = sum(1 for result in results if result["image_id"] in empty and result["score"] >= score_threshold)
    return FalseAlarms(len(empty), found, score_threshold)


def folder_false_alarms(
    predict: BatchPredictor, negatives: ImageSet, canvas: tuple[int, int], batch_size: int, score_threshold: float
) -> FalseAlarms:
    """False alarms on photos holding no object, letterboxed onto the canvas as the service does it."""
    found = 0
    for canvases in tqdm(negatives.batches(canvas, batch_size), desc="negatives", unit="batch", leave=False):
        found += sum(int((detections.scores >= score_threshold).sum()) for detections in predict(canvases))
    return FalseAlarms(len(negatives), found, score_threshold)
