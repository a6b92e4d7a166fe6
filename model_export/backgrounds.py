"""Real photographs: backgrounds for the synthetic scenes, and folders of photos that hold no object.

Photos come from scikit-image's ``skimage.data``, whose files ship inside its wheel (nothing is downloaded), or
from a folder the user gives. A few of scikit-image's photos are kept out of training (``SKIMAGE_HELD_OUT``) so
that the model can be checked on photos it has never seen: ``synth --held-out-photos`` draws only those.

A background is a random crop of a photo at the image's aspect ratio, scaled to the image, flipped and
colour-jittered; every draw comes from the generator it is given, so a scene stays a function of its seed.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from model_export.calibration import ImageSet, read_image_set
from model_export.command_errors import CalibrationError, PhotoFolderError
from service.decode import decode_image
from service.errors import ServiceError

# Photographs of scenes, objects, textures and microscopy in skimage.data. Left out of both lists: drawings and
# test patterns (horse, logo, phantom, color, chessboard), and the tiny ones (lfw faces, the gif).
SKIMAGE_TRAINING = (
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "microaneurysms.png",
    "moon.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)
# Never in a training set: the model's own check on unseen photos. The astronaut is the photo a new user tries
# first; the two motorcycle photos are one stereo scene, so both stay out.
SKIMAGE_HELD_OUT = ("astronaut.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png")

MAX_PHOTO_PIXELS = 40_000_000  # a larger photo is unreadable, as the service's default DETECTOR_MAX_IMAGE_PIXELS has it
MAX_PHOTO_SIDE = 1024  # photos are kept at most this large: crops are scaled to about 320 px
CACHED_PHOTOS = 64  # decoded photos kept in memory (at most 3 MB each)
MIN_CROP = 0.3  # the smallest crop, as a fraction of the side of the largest crop of the image's aspect ratio
VERTICAL_FLIP = 0.2  # upside down less often than mirrored: most photos have a sky


@dataclass(frozen=True)
class PhotoPool:
    """Photos to crop backgrounds from, in a fixed order (the draws index it); ``source`` says where they come from."""

    source: str
    paths: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def photo(self, index: int) -> Image.Image:
        """Photo ``index`` as RGB, at most MAX_PHOTO_SIDE on its longer side. Shared between calls: do not change it."""
        return _read_photo(self.paths[index])

    def describe(self) -> dict[str, object]:
        """What a data set's info records: where the photos come from and which they are."""
        root = Path(self.source)
        names = [path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name for path in self.paths]
        return {"source": self.source, "photos": names}


def skimage_pool(held_out: bool = False) -> PhotoPool:
    """scikit-image's training photos, or with ``held_out`` the ones kept out of training."""
    try:
        folder = Path(str(importlib.resources.files("skimage.data")))
    except ModuleNotFoundError as error:
        raise PhotoFolderError(
            "photo backgrounds need scikit-image's photos: install the export extra (scikit-image), or give --backgrounds DIR"
        ) from error
    paths = tuple(folder / name for name in (SKIMAGE_HELD_OUT if held_out else SKIMAGE_TRAINING))
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise PhotoFolderError(f"{folder}: scikit-image's photos {missing} are missing (the project pins the scikit-image that has them)")
    return PhotoPool(f"skimage.data ({'held out' if held_out else 'training'})", paths)


def folder_pool(root: Path) -> PhotoPool:
    """The usable photos of a folder (``synth --backgrounds``), read as ``read_photo_folder`` reads them."""
    return PhotoPool(str(root), read_photo_folder(root, "--backgrounds").paths)


def read_photo_folder(root: Path, option: str) -> ImageSet:
    """The usable photos of ``root`` and its subfolders, in the order of their paths; of a COCO data set directory,
    the images that hold no object (an annotated object would be a shape the model is told is not there).

    Unreadable files are skipped with a warning that names them and counts them (``calibration.read_image_set``).
    A folder that is missing, empty or holds no usable photo raises PhotoFolderError naming it and ``option``.
    """
    try:
        images = read_image_set(Path(root), minimum=1, max_pixels=MAX_PHOTO_PIXELS, what=option)
    except CalibrationError as error:
        raise PhotoFolderError(f"{option}: {error}") from error
    if images.dataset is None:
        return images
    empty = [index for index, record in enumerate(images.dataset.images) if len(record.boxes) == 0]
    if not empty:
        raise PhotoFolderError(
            f"{option}: {root}: a COCO data set whose {len(images)} images all hold objects; {option} needs images without any"
        )
    return images.subset(empty)


@functools.lru_cache(maxsize=CACHED_PHOTOS)
def _read_photo(path: Path) -> Image.Image:
    try:
        image, _ = decode_image(path.read_bytes(), MAX_PHOTO_PIXELS, fit=(MAX_PHOTO_SIDE, MAX_PHOTO_SIDE))
    except (ServiceError, OSError) as error:  # read once already when the folder was listed: changed since
        raise PhotoFolderError(f"{path}: cannot read the photo: {error}") from error
    image.thumbnail((MAX_PHOTO_SIDE, MAX_PHOTO_SIDE))
    return image


def photo_background(rng: np.random.Generator, pool: PhotoPool, width: int, height: int) -> np.ndarray:
    """A random crop of one of the pool's photos, scaled to ``width`` x ``height``, flipped and colour-jittered at
    random: float32 [H, W, 3] in 0..255."""
    photo = pool.photo(int(rng.integers(len(pool))))
    crop = photo.resize((width, height), Image.Resampling.BILINEAR, box=_crop_box(rng, photo.size, width / height))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < VERTICAL_FLIP:
        crop = crop.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return _jitter_colour(rng, np.asarray(crop, dtype=np.float32))


def _crop_box(rng: np.random.Generator, size: tuple[int, int], aspect: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a crop of aspect ``aspect`` (width / height) inside a photo of ``size``."""
    photo_w, photo_h = size
    largest_w = min(photo_w, photo_h * aspect)
    # Log-uniform: as many close-ups (a blurred patch of texture) as wide views.
    crop_w = largest_w * float(np.exp(rng.uniform(np.log(MIN_CROP), 0.0)))
    crop_h = crop_w / aspect
    left, top = rng.uniform(0, photo_w - crop_w), rng.uniform(0, photo_h - crop_h)
    return float(left), float(top), float(left + crop_w), float(top + crop_h)


def _jitter_colour(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """Brightness, contrast, saturation and a tint (a gain per channel, which also colours a grey photo)."""
    brightness, contrast, saturation = rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.4, 1.6)
    gains = rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    mean = float(pixels.mean())
    pixels = (pixels - mean) * contrast + mean * brightness
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = (grey + (pixels - grey) * saturation) * gains
    return np.clip(pixels, 0, 255).astype(np.float32)
