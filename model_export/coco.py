"""Reading and checking a COCO-format detection data set.

A data set directory holds ``annotations.json`` and the images it names,
relative to the directory. Every problem is reported with the file and the
field at fault, before any training starts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model_export.command_errors import DatasetError

ANNOTATIONS_FILE = "annotations.json"


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # [N, 4] float32: x1, y1, x2, y2 in image pixels
    labels: np.ndarray  # [N] int64: contiguous label ids, 1..C


@dataclass(frozen=True)
class CocoDataset:
    """A checked data set; ``categories[0]`` is ``"__background__"`` and label i names ``categories[i]``."""

    root: Path
    categories: list[str]
    # COCO category id of each label id (index 0, the background, has none).
    category_ids: list[int]
    images: list[ImageRecord]

    @property
    def annotations_path(self) -> Path:
        return self.root / ANNOTATIONS_FILE


def _require(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise DatasetError(f"{path}: {message}")


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (a data set directory holds {ANNOTATIONS_FILE} and its images)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON: {error}") from error
    _require(isinstance(data, dict), path, "the top level should be an object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        _require(isinstance(data.get(key), list), path, f"field '{key}' should be a list")
    return data


def _read_categories(data: dict[str, Any], path: Path) -> tuple[list[str], list[int]]:
    names, ids = ["__background__"], [0]
    for index, category in enumerate(sorted(data["categories"], key=lambda c: c.get("id", 0) if isinstance(c, dict) else 0)):
        where = f"categories[{index}]"
        _require(isinstance(category, dict), path, f"{where} should be an object")
        _require(isinstance(category.get("id"), int), path, f"{where}.id should be an integer")
        _require(isinstance(category.get("name"), str), path, f"{where}.name should be a string")
        _require(category["id"] not in ids[1:], path, f"{where}.id {category['id']} appears twice")
        names.append(category["name"])
        ids.append(category["id"])
    _require(len(names) > 1, path, "field 'categories' is empty")
    return names, ids


def _read_box(annotation: dict[str, Any], where: str, path: Path, width: int, height: int) -> list[float] | None:
    """The annotation's box as x1, y1, x2, y2 clipped to the image, or None if it is empty."""
    bbox = annotation.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
        raise DatasetError(f"{path}: {where}.bbox should be 4 finite numbers [x, y, width, height], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    _require(w >= 0 and h >= 0, path, f"{where}.bbox has a negative width or height: {bbox!r}")
    x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None
    return [x1, y1, x2, y2]


def load_dataset(root: Path, check_files: bool = True) -> CocoDataset:
    """Reads and checks ``root/annotations.json``; with ``check_files``, that every image exists."""
    path = Path(root) / ANNOTATIONS_FILE
    data = _load_json(path)
    categories, category_ids = _read_categories(data, path)
    label_of = {category_id: label for label, category_id in enumerate(category_ids) if label > 0}

    images: dict[int, dict[str, Any]] = {}
    for index, image in enumerate(data["images"]):
        where = f"images[{index}]"
        _require(isinstance(image, dict), path, f"{where} should be an object")
        _require(isinstance(image.get("id"), int), path, f"{where}.id should be an integer")
        _require(image["id"] not in images, path, f"{where}.id {image['id']} appears twice")
        _require(isinstance(image.get("file_name"), str), path, f"{where}.file_name should be a string")
        for key in ("width", "height"):
            _require(isinstance(image.get(key), int) and image[key] > 0, path, f"{where}.{key} should be a positive integer")
        if check_files:
            _require(
                (path.parent / image["file_name"]).is_file(),
                path,
                f"{where}.file_name: image file {path.parent / image['file_name']} is missing",
            )
        images[image["id"]] = {**image, "boxes": [], "labels": []}

    for index, annotation in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        _require(isinstance(annotation, dict), path, f"{where} should be an object")
        image = images.get(annotation.get("image_id", -1))
        if image is None:
            raise DatasetError(f"{path}: {where}.image_id {annotation.get('image_id')!r} names no image")
        category_id = annotation.get("category_id")
        _require(category_id in label_of, path, f"{where}.category_id {category_id!r} is not among the categories' ids {category_ids[1:]}")
        if annotation.get("iscrowd", 0):
            continue
        box = _read_box(annotation, where, path, image["width"], image["height"])
        if box is not None:
            image["boxes"].append(box)
            image["labels"].append(label_of[category_id])

    records = [
        ImageRecord(
            image_id=image_id,
            path=path.parent / image["file_name"],
            width=image["width"],
            height=image["height"],
            boxes=np.asarray(image["boxes"], dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(image["labels"], dtype=np.int64),
        )
        for image_id, image in images.items()
    ]
    return CocoDataset(Path(root), categories, category_ids, records)


def open_image(record: ImageRecord) -> Image.Image:
    """The record's image as RGB, checking that its size is the one the annotations give."""
    try:
        with Image.open(record.path) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError) as error:
        raise DatasetError(f"{record.path}: cannot read the image: {error}") from error
    if rgb.size != (record.width, record.height):
        raise DatasetError(
            f"{record.path}: the image is {rgb.width}x{rgb.height} but annotations give {record.width}x{record.height} (image id {record.image_id})"
        )
    return rgb
