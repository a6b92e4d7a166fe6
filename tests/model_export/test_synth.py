from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_export.__main__ import main
from model_export.backgrounds import SKIMAGE_HELD_OUT, SKIMAGE_TRAINING, PhotoPool, folder_pool, skimage_pool
from model_export.command_errors import OptionError, PhotoFolderError
from model_export.synth import (
    CATEGORIES,
    MAX_OBJECTS,
    MIN_OBJECT_PX,
    MIN_VISIBLE_FRACTION,
    PhotoScenes,
    SynthConfig,
    _layout,
    generate_image,
    photo_scenes,
    write_dataset,
)

# annotations.json and the decoded pixels of SynthConfig(count=6, seed=3), as the committed default model's data was
# made (before photo backgrounds): the default scenes must stay these until the default model is trained anew.
TODAYS_SCENES = "be27cc706befb9da797a8d9565670aa15f1830220109c9133fea8c9e1f24757a"


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


def _scene_digest(root: Path) -> str:
    digest = hashlib.sha256((root / "annotations.json").read_bytes())
    for path in sorted((root / "images").iterdir()):
        digest.update(np.asarray(Image.open(path)).tobytes())
    return digest.hexdigest()


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def training_photos() -> PhotoScenes:
    return PhotoScenes(skimage_pool(), 1.0)


def test_default_scenes_are_the_ones_the_default_model_was_trained_on(tmp_path: Path) -> None:
    assert photo_scenes(SynthConfig()) is None
    write_dataset(tmp_path, SynthConfig(count=6, seed=3))
    assert _scene_digest(tmp_path) == TODAYS_SCENES


def test_photos_change_only_the_backgrounds_of_the_images_drawn_for_them() -> None:
    photos = PhotoScenes(skimage_pool(), 0.5)
    on_photo = 0
    for index in range(16):
        textured, boxes = generate_image(seed=4, index=index)
        image, photo_boxes = generate_image(seed=4, index=index, photos=photos)
        assert photo_boxes == boxes, "a photo moved, added or dropped a shape"
        same = image.size == textured.size and np.array_equal(_pixels(image), _pixels(textured))
        on_photo += not same
    assert 4 <= on_photo <= 12, f"{on_photo} of 16 images on a photo at fraction 0.5"


def test_same_seed_writes_same_bytes_with_photos(tmp_path: Path) -> None:
    config = SynthConfig(count=6, seed=3, photo_fraction=0.7)
    write_dataset(tmp_path / "a", config)
    write_dataset(tmp_path / "b", config)
    write_dataset(tmp_path / "c", SynthConfig(count=6, seed=4, photo_fraction=0.7))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert _scene_digest(tmp_path / "a") != TODAYS_SCENES
    info = json.loads((tmp_path / "a" / "annotations.json").read_text())["info"]["photo_backgrounds"]
    assert info["fraction"] == 0.7 and info["photos"] == list(SKIMAGE_TRAINING)


def test_shapes_on_photos_are_painted_where_they_are_annotated(training_photos: PhotoScenes) -> None:
    bare = PhotoScenes(training_photos.pool, 1.0, bare=True)
    checked = 0
    for index in range(8):
        image, objects = generate_image(seed=8, index=index, empty_fraction=0.0, photos=training_photos)
        photo, nothing = generate_image(seed=8, index=index, photos=bare)
        assert nothing == [] and photo.size == image.size
        difference = np.abs(_pixels(image) - _pixels(photo)).sum(axis=2)
        for obj in objects:
            x, y, w, h = (int(v) for v in obj["bbox"])
            assert x >= 0 and y >= 0 and x + w <= image.width and y + h <= image.height
            # Noise alone moves a pixel by about 20 (summed over RGB); a shape's paint stands out from what lies under it.
            assert difference[y : y + h, x : x + w].mean() > 40, f"image {index}: nothing painted in the box {obj['bbox']}"
            checked += 1
    assert checked >= 20


def test_empty_photos_are_pure_negatives(tmp_path: Path, training_photos: PhotoScenes) -> None:
    for index in range(6):
        image, objects = generate_image(seed=2, index=index, empty_fraction=1.0, photos=training_photos)
        assert objects == [] and np.asarray(image).std() > 5
    write_dataset(tmp_path, SynthConfig(count=5, seed=2, photos_only=True))
    data = json.loads((tmp_path / "annotations.json").read_text())
    assert len(data["images"]) == 5 and data["annotations"] == []
    assert data["info"]["photo_backgrounds"]["bare"] is True


def test_held_out_photos_stay_out_of_training_sets(tmp_path: Path) -> None:
    assert not set(SKIMAGE_HELD_OUT) & set(SKIMAGE_TRAINING)
    assert {"astronaut.png", "coffee.png"} <= set(SKIMAGE_HELD_OUT)
    training, held_out = skimage_pool(), skimage_pool(held_out=True)
    assert all(path.is_file() for path in training.paths + held_out.paths), "scikit-image no longer ships a listed photo"
    assert {path.name for path in training.paths} == set(SKIMAGE_TRAINING)
    assert main(["synth", "--out", str(tmp_path), "--count", "2", "--held-out-photos"]) == 0
    info = json.loads((tmp_path / "annotations.json").read_text())["info"]["photo_backgrounds"]
    assert info["photos"] == list(SKIMAGE_HELD_OUT) and info["fraction"] == 1.0


def _photo_folder(root: Path, names: tuple[str, ...]) -> Path:
    root.mkdir()
    for name in names:
        shutil.copy(skimage_pool().paths[0].parent / name, root / name)
    return root


def test_a_folder_of_backgrounds_is_deterministic_and_used(tmp_path: Path) -> None:
    folder = _photo_folder(tmp_path / "photos", ("coffee.png", "astronaut.png"))
    config = SynthConfig(count=4, seed=5, backgrounds=folder)
    write_dataset(tmp_path / "a", config)
    write_dataset(tmp_path / "b", config)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    info = json.loads((tmp_path / "a" / "annotations.json").read_text())["info"]["photo_backgrounds"]
    assert info["source"] == str(folder) and info["photos"] == ["astronaut.png", "coffee.png"] and info["fraction"] == 1.0


@pytest.mark.parametrize("problem", ["missing", "empty", "unreadable"])
def test_a_bad_backgrounds_folder_is_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str) -> None:
    folder = tmp_path / "photos"
    if problem != "missing":
        folder.mkdir()
    if problem == "unreadable":
        (folder / "broken.jpg").write_bytes(b"not a jpeg")
    assert main(["synth", "--out", str(tmp_path / "out"), "--count", "2", "--backgrounds", str(folder)]) == 2
    error = capsys.readouterr().err
    assert f"{folder}:" in error and "--backgrounds" in error
    assert not (tmp_path / "out").exists(), "images were written before the folder was checked"


def test_unreadable_backgrounds_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _photo_folder(tmp_path / "photos", ("coffee.png",))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.jpg").write_text("not a photo")
    with caplog.at_level(logging.WARNING):
        pool = folder_pool(folder)
    assert [path.name for path in pool.paths] == ["coffee.png"]
    warning = caplog.text
    assert "skipped 2 unreadable image(s) of 3" in warning and "broken.png" in warning and "notes.jpg" in warning


def test_a_coco_set_gives_only_its_images_without_objects(tmp_path: Path) -> None:
    write_dataset(tmp_path / "set", SynthConfig(count=6, seed=1, empty_fraction=0.5))
    data = json.loads((tmp_path / "set" / "annotations.json").read_text())
    annotated = {a["image_id"] for a in data["annotations"]}
    empty = sorted(tmp_path / "set" / i["file_name"] for i in data["images"] if i["id"] not in annotated)
    assert 0 < len(empty) < 6
    assert sorted(folder_pool(tmp_path / "set").paths) == empty
    write_dataset(tmp_path / "full", SynthConfig(count=3, seed=1, empty_fraction=0.0))
    with pytest.raises(PhotoFolderError, match="all hold objects"):
        folder_pool(tmp_path / "full")


def test_contradicting_photo_options_are_refused() -> None:
    with pytest.raises(OptionError, match="ask for one"):
        SynthConfig(backgrounds=Path("photos"), held_out_photos=True)
    with pytest.raises(OptionError, match="--photo-fraction 0"):
        SynthConfig(held_out_photos=True, photo_fraction=0.0)
    with pytest.raises(OptionError, match="contradicts"):
        SynthConfig(photos_only=True, photo_fraction=0.5)
    with pytest.raises(OptionError, match=r"within 0\.\.1"):
        SynthConfig(photo_fraction=1.5)
    assert SynthConfig(photo_fraction=0.25).photo_share == 0.25 and SynthConfig(photos_only=True).photo_share == 1.0


def test_photo_pool_describes_its_photos_relative_to_the_folder(tmp_path: Path) -> None:
    pool = PhotoPool(str(tmp_path), (tmp_path / "a" / "b.png", tmp_path / "c.jpg"))
    assert pool.describe() == {"source": str(tmp_path), "photos": ["a/b.png", "c.jpg"]}
