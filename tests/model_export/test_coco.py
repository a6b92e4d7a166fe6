from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model_export.coco import DatasetError, load_dataset


@pytest.fixture
def dataset_copy(small_dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(small_dataset, root)
    return root


def _edit(root: Path, change) -> None:  # type: ignore[no-untyped-def]
    path = root / "annotations.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_loads_boxes_as_corners(small_dataset: Path) -> None:
    dataset = load_dataset(small_dataset)
    data = json.loads((small_dataset / "annotations.json").read_text())
    assert dataset.categories[0] == "__background__"
    assert sum(len(r.boxes) for r in dataset.images) == len(data["annotations"])
    first = data["annotations"][0]
    record = next(r for r in dataset.images if r.image_id == first["image_id"])
    x, y, w, h = first["bbox"]
    assert any(list(box) == pytest.approx([x, y, x + w, y + h]) for box in record.boxes)


def test_rejects_malformed_json(dataset_copy: Path) -> None:
    (dataset_copy / "annotations.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"annotations\.json: not valid JSON"):
        load_dataset(dataset_copy)


def test_rejects_missing_field(dataset_copy: Path) -> None:
    _edit(dataset_copy, lambda d: d.pop("categories"))
    with pytest.raises(DatasetError, match="field 'categories' should be a list"):
        load_dataset(dataset_copy)


def test_rejects_missing_image_file(dataset_copy: Path) -> None:
    (dataset_copy / "images" / "000002.png").unlink()
    with pytest.raises(DatasetError, match=r"images\[2\]\.file_name: image file .*000002.png is missing"):
        load_dataset(dataset_copy)


@pytest.mark.parametrize(
    ("index", "field", "value", "message"),
    [
        (3, "category_id", 99, r"annotations\[3\]\.category_id 99 is not among"),
        (0, "image_id", 12345, r"annotations\[0\]\.image_id 12345 names no image"),
        (1, "bbox", [1, 2, "wide"], r"annotations\[1\]\.bbox should be 4 finite numbers"),
    ],
    ids=["category_id_out_of_range", "annotation_of_unknown_image", "bad_bbox"],
)
def test_rejects_a_bad_annotation_field(dataset_copy: Path, index: int, field: str, value: object, message: str) -> None:
    def change(data: dict) -> None:
        data["annotations"][index][field] = value

    _edit(dataset_copy, change)
    with pytest.raises(DatasetError, match=message):
        load_dataset(dataset_copy)


def test_rejects_duplicate_image_ids(dataset_copy: Path) -> None:
    def change(data: dict) -> None:
        data["images"][1]["id"] = data["images"][0]["id"]

    _edit(dataset_copy, change)
    with pytest.raises(DatasetError, match=r"images\[1\]\.id .* appears twice"):
        load_dataset(dataset_copy)
