"""Deterministic synthetic COCO data set of shapes for training and testing detectors.

The same seed gives the same bytes: every random draw comes from one
``numpy.random.Generator`` per image (seeded from the set's seed and the image
index), and images are written as PNG, whose encoding has no hidden state.

What makes it a fair test of a two-stage detector:

* 7 classes of filled shapes, stretched (aspect ratio 1:2 to 2:1), rotated
  and coloured at random, from about 12 px to most of the image;
* partial occlusion (a later shape may hide up to half of an earlier one) and
  shapes cut by the image border; boxes cover the visible pixels, as COCO's do;
* textured, noisy backgrounds with distractors (lines, jagged blobs) that
  belong to no class;
* 0 to 12 objects per image (some images empty), images of several sizes;
* optionally (``SynthConfig.photo_fraction``), real photographs as backgrounds
  (``model_export.backgrounds``): shapes on photos, and empty photos as pure
  negatives. A photo replaces only the background: whether an image gets one,
  and which crop, are drawn from a generator of their own, so the scenes
  without a photo, and the places and boxes of the shapes on one, are those
  of a set without photos.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from model_export.backgrounds import PhotoPool, folder_pool, photo_background, skimage_pool
from model_export.config import SynthConfig

CATEGORIES = ["circle", "triangle", "square", "star", "cross", "ring", "arrow"]

# (width, height) of generated images; several aspect ratios and scales.
IMAGE_SIZES = [(320, 320), (384, 288), (288, 384), (320, 240), (240, 320), (352, 256), (256, 256), (224, 288)]

MIN_OBJECT_PX = 12
MAX_OBJECTS = 12
MIN_VISIBLE_FRACTION = 0.5
PHOTO_STREAM = 1  # the photo draws' generator is seeded [seed, index, PHOTO_STREAM], apart from the scene's [seed, index]


@dataclass(frozen=True)
class PhotoScenes:
    """How a set uses photos: the share of images on a crop of one of ``pool``'s photos; with ``bare``, each such
    image is the photo crop alone (no shape, no distractor, no noise)."""

    pool: PhotoPool
    fraction: float
    bare: bool = False


def photo_scenes(config: SynthConfig) -> PhotoScenes | None:
    """The photos that ``config`` asks for, or None for today's textured scenes only."""
    if config.photo_share == 0:
        return None
    pool = folder_pool(config.backgrounds) if config.backgrounds is not None else skimage_pool(config.held_out_photos)
    return PhotoScenes(pool, config.photo_share, config.photos_only)


def _unit_polygon(category: str) -> list[list[tuple[float, float]]]:
    """Outline(s) of a shape in [-1, 1]^2. A second outline is a hole."""
    if category == "circle":
        return [_circle(1.0)]
    if category == "ring":
        return [_circle(1.0), _circle(0.5)]
    if category == "triangle":
        return [[(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]]
    if category == "square":
        return [[(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]]
    if category == "star":
        points = []
        for i in range(10):
            radius = 1.0 if i % 2 == 0 else 0.42
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((radius * math.cos(angle), radius * math.sin(angle)))
        return [points]
    if category == "cross":
        t = 0.33
        return [[(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)]]
    if category == "arrow":
        return [[(-1, -0.3), (0.2, -0.3), (0.2, -0.8), (1, 0), (0.2, 0.8), (0.2, 0.3), (-1, 0.3)]]
    raise ValueError(f"unknown category {category!r}")


def _circle(radius: float, points: int = 40) -> list[tuple[float, float]]:
    return [(radius * math.cos(2 * math.pi * i / points), radius * math.sin(2 * math.pi * i / points)) for i in range(points)]


def _place(
    outline: list[tuple[float, float]], cx: float, cy: float, half_w: float, half_h: float, angle: float
) -> list[tuple[float, float]]:
    cos, sin = math.cos(angle), math.sin(angle)
    placed = []
    for x, y in outline:
        sx, sy = x * half_w, y * half_h
        placed.append((cx + sx * cos - sy * sin, cy + sx * sin + sy * cos))
    return placed


def _shape_mask(size: tuple[int, int], outlines: list[list[tuple[float, float]]]) -> np.ndarray:
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon(outlines[0], fill=255)
    for hole in outlines[1:]:
        draw.polygon(hole, fill=0)
    return np.asarray(mask) > 0


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: random cells upsampled bilinearly, shape [H, W]."""
    coarse = rng.random((cells, cells)).astype(np.float32)
    image = Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A textured RGB background, float32 [H, W, 3] in 0..255."""
    base = rng.uniform(40, 215, size=3).astype(np.float32)
    tint = rng.uniform(-70, 70, size=3).astype(np.float32)
    low = _smooth_noise(rng, width, height, int(rng.integers(2, 6)))[..., None]
    high = _smooth_noise(rng, width, height, int(rng.integers(12, 40)))[..., None]
    image = base + tint * low + rng.uniform(10, 45) * (high - 0.5)
    return np.clip(image, 0, 255)


def _draw_distractors(rng: np.random.Generator, image: Image.Image) -> None:
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(int(rng.integers(0, 8))):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            start = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
            end = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
            draw.line([start, end], fill=colour, width=int(rng.integers(1, 4)))
        else:
            # A jagged blob: a random star-shaped polygon with many vertices, unlike any class.
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            radius = rng.uniform(5, 30)
            n = int(rng.integers(16, 31))
            angles = np.sort(rng.uniform(0, 2 * math.pi, size=n))
            radii = radius * rng.uniform(0.2, 1.0, size=n)
            points = [(float(cx + r * math.cos(a)), float(cy + r * math.sin(a))) for a, r in zip(angles, radii, strict=False)]
            draw.polygon(points, fill=colour)


def _object_fill(rng: np.random.Generator, width: int, height: int, background_mean: np.ndarray) -> np.ndarray:
    """The object's paint: a colour away from the background's, with a gradient and noise."""
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        if np.abs(colour - background_mean).sum() > 90:
            break
    gradient = _smooth_noise(rng, width, height, 2)[..., None] - 0.5
    return colour + rng.uniform(0, 60) * gradient


@dataclass
class _Object:
    category_id: int
    mask: np.ndarray  # visible pixels, [H, W] bool
    full_area: int


def _random_object(rng: np.random.Generator, width: int, height: int) -> tuple[int, np.ndarray]:
    category_id = int(rng.integers(1, len(CATEGORIES) + 1))
    # Log-uniform size (the geometric mean of width and height): as many small objects as large ones.
    size = math.exp(rng.uniform(math.log(MIN_OBJECT_PX), math.log(0.75 * min(width, height))))
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    half_w, half_h = size * math.sqrt(aspect) / 2, size / math.sqrt(aspect) / 2
    # Centres may lie just outside the middle so that some shapes are cut by the border.
    cx = rng.uniform(-0.15 * half_w, width + 0.15 * half_w)
    cy = rng.uniform(-0.15 * half_h, height + 0.15 * half_h)
    angle = rng.uniform(0, 2 * math.pi)
    outlines = [_place(o, cx, cy, half_w, half_h, angle) for o in _unit_polygon(CATEGORIES[category_id - 1])]
    return category_id, _shape_mask((width, height), outlines)


def _layout(rng: np.random.Generator, width: int, height: int, count: int) -> list[_Object]:
    """Places up to ``count`` objects so that each keeps at least half of itself visible."""
    objects: list[_Object] = []
    for _ in range(count * 10):
        if len(objects) == count:
            break
        category_id, mask = _random_object(rng, width, height)
        area = int(mask.sum())
        if area < MIN_OBJECT_PX * MIN_OBJECT_PX * 0.3:
            continue
        if any((o.mask & ~mask).sum() < MIN_VISIBLE_FRACTION * o.full_area for o in objects):
            continue
        for other in objects:
            other.mask = other.mask & ~mask
        objects.append(_Object(category_id, mask, area))
    return objects


def generate_image(
    seed: int,
    index: int,
    size_scale: float = SynthConfig.size_scale,
    empty_fraction: float = SynthConfig.empty_fraction,
    photos: PhotoScenes | None = None,
) -> tuple[Image.Image, list[dict]]:
    """One image and its annotations (COCO dicts without ids). Depends only on its arguments (and the photos' files).
    Without ``photos`` it is today's textured scene, the one the committed default model was trained on."""
    rng = np.random.default_rng([seed, index])
    base_w, base_h = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    width, height = max(64, round(base_w * size_scale)), max(64, round(base_h * size_scale))
    photo = _photo(seed, index, width, height, photos)
    if photo is not None and photos is not None and photos.bare:
        return Image.fromarray(photo.astype(np.uint8)), []
    # Drawn under a photo too: the scene's later draws (distractors, shapes, their boxes) stay the ones of its seed.
    texture = _background(rng, width, height)
    pixels = texture if photo is None else photo
    canvas = Image.fromarray(pixels.astype(np.uint8))
    _draw_distractors(rng, canvas)
    pixels = np.asarray(canvas, dtype=np.float32).copy()

    count = 0 if rng.random() < empty_fraction else int(rng.integers(1, MAX_OBJECTS + 1))
    objects = _layout(rng, width, height, count)
    background_mean = pixels.reshape(-1, 3).mean(axis=0)
    for obj in objects:
        # A photo is not one colour: the paint must stand out from what lies under the shape, not from the mean.
        under = background_mean if photo is None else pixels[obj.mask].mean(axis=0)
        # Visible masks are disjoint (each pixel shows its topmost shape), so painting order is free.
        fill = _object_fill(rng, width, height, under)
        pixels = np.where(obj.mask[..., None], fill, pixels)

    noisy = pixels + rng.normal(0, rng.uniform(2, 10), size=pixels.shape)
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return image, [_annotation(obj) for obj in objects]


def _photo(seed: int, index: int, width: int, height: int, photos: PhotoScenes | None) -> np.ndarray | None:
    """The image's photo background (float32 [H, W, 3]), or None for a textured scene. Its draws come from a
    generator of their own, so that the scenes without a photo stay as they are in a set without photos."""
    if photos is None:
        return None
    rng = np.random.default_rng([seed, index, PHOTO_STREAM])
    if rng.random() >= photos.fraction:
        return None
    return photo_background(rng, photos.pool, width, height)


def _annotation(obj: _Object) -> dict:
    ys, xs = np.nonzero(obj.mask)
    x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
    return {
        "category_id": obj.category_id,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": float(obj.mask.sum()),
        "iscrowd": 0,
    }


def write_dataset(out_dir: Path, config: SynthConfig) -> Path:
    """Writes ``annotations.json`` and ``images/*.png`` under ``out_dir``; returns the JSON path."""
    photos = photo_scenes(config)  # a bad --backgrounds folder fails before any image is written
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    for index in tqdm(range(config.count), desc="synth", unit="img"):
        image, objects = generate_image(config.seed, index, config.size_scale, config.empty_fraction, photos)
        file_name = f"images/{index:06d}.png"
        image.save(out_dir / file_name, format="PNG", optimize=False)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": image.width, "height": image.height})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj})
    info: dict[str, object] = {"description": "synthetic shapes", "seed": config.seed, "count": config.count}
    if photos is not None:  # only then: a set without photos keeps the bytes it always had
        info["photo_backgrounds"] = {"fraction": photos.fraction, "bare": photos.bare, **photos.pool.describe()}
    dataset = {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CATEGORIES)],
    }
    path = out_dir / "annotations.json"
    path.write_text(json.dumps(dataset, indent=1))
    return path
