from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from model_export.synth import (
    CATEGORIES,
    MAX_OBJECTS,
    MIN_OBJECT_PX,
    MIN_VISIBLE_FRACTION,
    SynthConfig,
    _layout,
    generate_image,
    write_dataset,
)


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_writes_same_bytes(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", SynthConfig(count=6, seed=3))
    write_dataset(tmp_path / "b", SynthConfig(count=6, seed=3))
    write_dataset(tmp_path / "c", SynthConfig(count=6, seed=4))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_annotations_are_valid_coco(small_dataset: Path) -> None:
    data = json.loads((small_dataset / "annotations.json").read_text())
    assert [c["name"] for c in data["categories"]] == CATEGORIES
    assert len(CATEGORIES) >= 6
    sizes = {(image["width"], image["height"]) for image in data["images"]}
    assert len(sizes) >= 2
    by_id = {image["id"]: image for image in data["images"]}
    for annotation in data["annotations"]:
        image = by_id[annotation["image_id"]]
        x, y, w, h = annotation["bbox"]
        assert x >= 0 and y >= 0 and x + w <= image["width"] and y + h <= image["height"]
        assert w >= 1 and h >= 1


def test_statistics_cover_what_a_detector_must_handle() -> None:
    """Over many images: empty ones, crowded ones, tiny and huge objects, border contact, all classes."""
    counts, sizes, touching, labels = [], [], 0, set()
    for index in range(150):
        image, objects = generate_image(seed=11, index=index)
        counts.append(len(objects))
        for obj in objects:
            x, y, w, h = obj["bbox"]
            sizes.append(max(w, h) / max(image.size))
            touching += x <= 0 or y <= 0 or x + w >= image.width or y + h >= image.height
            labels.add(obj["category_id"])
    assert min(counts) == 0 and max(counts) >= 10 and max(counts) <= MAX_OBJECTS
    assert min(sizes) < 0.06 and max(sizes) > 0.6
    assert touching >= 20
    assert labels == set(range(1, len(CATEGORIES) + 1))


def test_occluded_objects_keep_half_of_their_pixels() -> None:
    # The annotations hold only the visible area; the layout also knows each shape's full area, so it is checked there.
    occluded = 0
    for index in range(20):
        objects = _layout(np.random.default_rng([5, index]), 320, 240, MAX_OBJECTS)
        masks = np.stack([obj.mask for obj in objects]) if objects else np.zeros((0, 240, 320), dtype=bool)
        assert (masks.sum(axis=0) <= 1).all(), "visible masks overlap: a pixel shows two shapes"
        for obj in objects:
            visible = int(obj.mask.sum())
            assert visible >= MIN_VISIBLE_FRACTION * obj.full_area, f"{visible} of {obj.full_area} pixels visible"
            occluded += visible < obj.full_area
    assert occluded >= 10, "too few occluded shapes to judge"


def test_annotated_area_and_box_are_the_visible_pixels() -> None:
    image, objects = generate_image(seed=5, index=3, empty_fraction=0.0)
    assert np.asarray(image).dtype == np.uint8 and objects
    for obj in objects:
        _, _, w, h = obj["bbox"]
        assert MIN_OBJECT_PX * MIN_OBJECT_PX * 0.3 <= obj["area"] <= w * h
