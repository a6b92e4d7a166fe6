"""The accuracy gate of a reduced-precision graph: measured against the package's float graph, both in ONNX Runtime, on validation images.

Two figures (``service.manifest.AccuracyGate``):

* mAP of each graph, with pycocotools as ``evaluate`` computes it: mAP@[.5:.95] against the ground truth of
  a COCO validation set; for a plain folder of images, mAP@.5 against the float graph's own detections at
  score >= ``match_score`` (``reference`` says which), so that the float graph scores 1.0 there and the
  reduced one's mAP says how far its detections moved from the float graph's. Not mAP@[.5:.95] there: the
  float graph's boxes are not the objects' true boxes, and at its strict IoUs the int8 graph's sub-pixel
  shifts count as misses (the default model, seed-12 scenes: 0.981 at [.5:.95] against the float graph's
  detections, 0.997 at .5, while against the annotations it lost 0.001 mAP@[.5:.95]).
* recall: the share of the float graph's detections at score >= ``match_score`` that the reduced graph finds
  again among its own at that score: same label, IoU >= ``match_iou``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model_export.calibration import ImageSet
from model_export.coco import ANNOTATIONS_FILE, CocoDataset, ImageRecord
from model_export.command_errors import AccuracyGateError, CalibrationError
from model_export.config import QuantizeConfig
from model_export.detections import BatchPredictor, Detections
from model_export.evaluate import coco_metrics, evaluate
from model_export.package import OnnxPredictor
from service.agreement import found_again
from service.manifest import AccuracyGate, ModelManifest


@dataclass
class _Recorder:
    """A predictor that keeps what it returned, in order: the detections in canvas pixels, for the recall."""

    predict: BatchPredictor
    outputs: list[Detections] = field(default_factory=list)

    def __call__(self, canvases: np.ndarray) -> list[Detections]:
        results = self.predict(canvases)
        self.outputs += results
        return results


def measure_accuracy(float_package: Path, reduced_package: Path, images: ImageSet, config: QuantizeConfig) -> AccuracyGate:
    """The gate's figures of the graph of ``reduced_package`` against that of ``float_package`` (same canvas and classes)."""
    graphs = [OnnxPredictor(Path(package), config.map_score_threshold) for package in (float_package, reduced_package)]
    manifest = graphs[0].manifest
    if images.dataset is None:
        detections: list[list[Detections]] = [[], []]
        for canvases in images.batches(manifest.canvas, config.batch_size):
            for found, graph in zip(detections, graphs, strict=True):
                found += graph(canvases)
        return gate_against_float_detections(detections[0], detections[1], manifest, config, images.root)
    with tempfile.TemporaryDirectory(prefix="accuracy-gate-") as scratch:
        dataset = _annotations_of(images.dataset, Path(scratch))
        recorders = [_Recorder(graph) for graph in graphs]
        maps = [evaluate(r, dataset, manifest.canvas, config.batch_size, manifest.categories).map for r in recorders]
    float_found, found = (recorder.outputs for recorder in recorders)
    return _gate_figures(float_found, found, (maps[0], maps[1]), config, images.root, reference="annotations")


def gate_against_float_detections(
    float_found: list[Detections], found: list[Detections], manifest: ModelManifest, config: QuantizeConfig, where: Path | str
) -> AccuracyGate:
    """The gate's figures on images without annotations: mAP@.5 of each side against the float graph's detections at
    ``match_score``, and the share of those found again. ``where`` names the images in an error."""
    with tempfile.TemporaryDirectory(prefix="accuracy-gate-") as scratch:
        truth = _float_detections_as_truth(float_found, manifest.categories, manifest.canvas, config.match_score, Path(scratch))
        maps = [coco_metrics(truth, _results(side, config.map_score_threshold)).map50 for side in (float_found, found)]
    return _gate_figures(float_found, found, (maps[0], maps[1]), config, where, reference="float_detections")


def _gate_figures(
    float_found: list[Detections],
    found: list[Detections],
    maps: tuple[float, float],
    config: QuantizeConfig,
    where: Path | str,
    reference: Literal["annotations", "float_detections"],
) -> AccuracyGate:
    recall, base = found_again(float_found, found, config.match_score, config.match_iou)
    if base == 0:
        raise CalibrationError(
            f"{where}: on its {len(found)} validation images the float graph detects nothing at score >= "
            f"{config.match_score:g}, so the gate has nothing to compare; validate on images with objects the model finds"
        )
    return AccuracyGate(
        val_images=len(found),
        reference=reference,
        metric="mAP@[.5:.95]" if reference == "annotations" else "mAP@.5",
        float_map=round(maps[0], 6),
        map=round(maps[1], 6),
        map_drop=round(maps[0] - maps[1], 6),
        recall=round(recall, 6),
        float_detections=base,
        max_map_drop=config.max_map_drop,
        min_recall=config.min_recall,
        match_score=config.match_score,
        match_iou=config.match_iou,
    )


def gate_misses(gate: AccuracyGate) -> list[str]:
    """What the gate's figures miss, each with by how much; empty when the graph passes."""
    misses = []
    if gate.map_drop > gate.max_map_drop:
        misses.append(
            f"{gate.metric} dropped by {gate.map_drop:.4f} ({gate.float_map:.4f} -> {gate.map:.4f}), more than the "
            f"{gate.max_map_drop:g} allowed: missed by {gate.map_drop - gate.max_map_drop:.4f}"
        )
    if gate.recall < gate.min_recall:
        misses.append(
            f"it found again {gate.recall:.2%} of the float graph's {gate.float_detections} detections at score >= "
            f"{gate.match_score:g} (IoU >= {gate.match_iou:g}), below the {gate.min_recall:.2%} required: "
            f"missed by {gate.min_recall - gate.recall:.2%}"
        )
    return misses


def check_gate(gate: AccuracyGate, precision: str, where: Path) -> None:
    """Raises AccuracyGateError, saying by how much, when the figures miss the gate."""
    misses = gate_misses(gate)
    if misses:
        against = "the ground truth" if gate.reference == "annotations" else "the float graph's detections"
        raise AccuracyGateError(
            f"the {precision} graph missed its accuracy gate on {gate.val_images} validation images (mAP against {against}): "
            + "; ".join(misses)
            + f". It was not written; {where} is unchanged"
        )


def _annotations_of(dataset: CocoDataset, scratch: Path) -> CocoDataset:
    """The data set restricted to its ``images`` (a held-out part), with an annotations file of theirs alone in ``scratch``:
    pycocotools scores every image of the file, and an image left out would count as all missed."""
    data = json.loads(dataset.annotations_path.read_text())
    kept = {record.image_id for record in dataset.images}
    if not any(len(record.boxes) for record in dataset.images):
        raise CalibrationError(f"{dataset.annotations_path}: its validation images hold no objects, so no mAP can be measured")
    data["images"] = [image for image in data["images"] if image.get("id") in kept]
    data["annotations"] = [annotation for annotation in data["annotations"] if annotation.get("image_id") in kept]
    (scratch / ANNOTATIONS_FILE).write_text(json.dumps(data))
    return replace(dataset, root=scratch)


def _float_detections_as_truth(
    detections: list[Detections], categories: list[str], canvas: tuple[int, int], score: float, scratch: Path
) -> CocoDataset:
    """A COCO data set (annotations only, in canvas pixels) whose objects are the float graph's detections at ``score``."""
    height, width = canvas
    records: list[ImageRecord] = []
    annotations: list[dict[str, Any]] = []
    for image_id, found in enumerate(detections):
        keep = found.scores >= score
        records.append(ImageRecord(image_id, scratch / f"{image_id}.png", width, height, found.boxes[keep], found.labels[keep]))
        for box, label in zip(found.boxes[keep].tolist(), found.labels[keep].tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    data: dict[str, Any] = {
        "images": [{"id": r.image_id, "file_name": r.path.name, "width": width, "height": height} for r in records],
        "annotations": annotations,
        "categories": [{"id": label, "name": name} for label, name in enumerate(categories) if label > 0],
    }
    (scratch / ANNOTATIONS_FILE).write_text(json.dumps(data))
    return CocoDataset(scratch, categories, list(range(len(categories))), records)


def _results(detections: list[Detections], score: float) -> list[dict[str, Any]]:
    """COCO result dicts of the detections at ``score`` or more, in canvas pixels; label ids are the category ids."""
    results = []
    for image_id, found in enumerate(detections):
        for box, value, label in zip(found.boxes.tolist(), found.scores.tolist(), found.labels.tolist(), strict=True):
            if value >= score:
                results.append(
                    {"image_id": image_id, "category_id": label, "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": value}
                )
    return results
