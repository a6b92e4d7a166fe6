"""A picture grid of a model's detections: the model card's view of what it finds, and what it imagines, on photos.

Each row is one set of images (say, held-out photos with shapes on them, then photos holding none), each cell an
image with the detections at the service's default score threshold drawn by the service's own renderer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from model_export.backgrounds import MAX_PHOTO_PIXELS
from model_export.calibration import ImageSet, read_image_set
from model_export.detections import BatchPredictor
from service.letterbox import letterbox
from service.render import draw_detections
from service.schemas import Box, Detection

CELL = 240  # pixels of a cell's longer side
PER_ROW = 6  # images of each set in `evaluate --grid`
GAP = 4
BACKGROUND = (255, 255, 255)


def annotated(
    predict: BatchPredictor, image: Image.Image, canvas: tuple[int, int], categories: Sequence[str], score_threshold: float
) -> Image.Image:
    """``image`` with the model's detections at ``score_threshold`` or above drawn on it, in its own pixels."""
    array, where = letterbox(image, canvas)
    found = predict(array[np.newaxis])[0]
    keep = found.scores >= score_threshold
    boxes = where.boxes_to_image(found.boxes[keep].astype(np.float64))
    detections = [
        Detection(box=Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]), score=float(s), label=int(k), class_name=categories[int(k)])
        for b, s, k in zip(boxes, found.scores[keep], found.labels[keep], strict=True)
    ]
    return draw_detections(image.copy(), detections)


def detection_grid(
    predict: BatchPredictor,
    rows: Sequence[tuple[ImageSet, int]],
    canvas: tuple[int, int],
    categories: Sequence[str],
    score_threshold: float,
) -> Image.Image:
    """One row per (image set, count): that many of the set's images, spread through it, each annotated and scaled to a cell."""
    columns = max(count for _, count in rows)
    grid = Image.new("RGB", (columns * (CELL + GAP) - GAP, len(rows) * (CELL + GAP) - GAP), BACKGROUND)
    for row, (images, count) in enumerate(rows):
        chosen = images.spread(count)
        for column in range(len(chosen)):
            cell = annotated(predict, chosen.image(column, fit=canvas), canvas, categories, score_threshold)
            cell.thumbnail((CELL, CELL))
            grid.paste(cell, (column * (CELL + GAP), row * (CELL + GAP)))
    return grid


def write_evaluation_grid(
    path: Path,
    predict: BatchPredictor,
    data: Path,
    negatives: ImageSet | None,
    canvas: tuple[int, int],
    categories: Sequence[str],
    score_threshold: float,
) -> None:
    """``evaluate --grid``: a row of the data set's images, and one of the negatives where there are some."""
    rows = [(read_image_set(data, minimum=1, max_pixels=MAX_PHOTO_PIXELS, what="--data"), PER_ROW)]
    if negatives is not None:
        rows.append((negatives, PER_ROW))
    path.parent.mkdir(parents=True, exist_ok=True)
    detection_grid(predict, rows, canvas, categories, score_threshold).save(path, optimize=True)
    print(f"wrote {path}")
