"""Calibration and validation images for a reduced-precision graph: a folder of images, or a COCO data set.

A folder that holds ``annotations.json`` is a COCO data set (``model_export.coco``): its images, in the
annotations' order, and their ground truth, which the accuracy gate scores against. Any other folder is
searched (subfolders too) for image files, taken in the order of their paths.

Every image is read once when the set is made: an unreadable one is skipped with a warning that names it,
and a set with too few readable images is refused, naming the folder. Canvases are made on demand, batch by
batch, so that a large set costs no memory: a COCO set's images are read as ``evaluate`` reads them (its
boxes are in those pixels), a plain folder's as the service decodes an upload (EXIF orientation applied,
``service.decode``), then letterboxed onto the canvas as the service does it (``service.letterbox``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from model_export.coco import ANNOTATIONS_FILE, CocoDataset, ImageRecord, load_dataset, open_image
from model_export.command_errors import CalibrationError, DatasetError
from service.decode import decode_image
from service.errors import ServiceError
from service.letterbox import letterbox

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
LISTED_SKIPS = 10  # unreadable images named in the warning; the count covers all of them
CHECK_SIZE = (32, 32)


@dataclass(frozen=True)
class ImageSet:
    """The readable images of a folder, in a fixed order. ``dataset`` holds their annotations (``dataset.images[i]``
    is ``paths[i]``) where the folder is a COCO data set, else it is None."""

    root: Path
    paths: tuple[Path, ...]
    dataset: CocoDataset | None
    max_pixels: int

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: list[int]) -> ImageSet:
        dataset = self.dataset
        if dataset is not None:
            dataset = replace(dataset, images=[dataset.images[i] for i in indices])
        return replace(self, paths=tuple(self.paths[i] for i in indices), dataset=dataset)

    def split(self, fraction: float, minimum: int) -> tuple[ImageSet, ImageSet]:
        """(calibration, held out): the last ``fraction`` of the images, at least ``minimum``, are held out."""
        held_out = max(minimum, math.ceil(len(self) * fraction))
        if held_out >= len(self):
            raise CalibrationError(f"{self.root}: {len(self)} images cannot give {held_out} held-out images and keep some to calibrate")
        cut = len(self) - held_out
        return self.subset(list(range(cut))), self.subset(list(range(cut, len(self))))

    def spread(self, limit: int) -> ImageSet:
        """At most ``limit`` of the images, evenly spaced through the set."""
        if len(self) <= limit:
            return self
        return self.subset(sorted({int(i) for i in np.linspace(0, len(self) - 1, limit)}))

    def check_classes(self, categories: list[str]) -> None:
        """A COCO set's classes must be the model's, in order (``categories[0]`` is the background): the gate scores by label."""
        if self.dataset is not None and self.dataset.categories[1:] != categories[1:]:
            raise CalibrationError(
                f"{self.dataset.annotations_path}: the data set's classes {self.dataset.categories[1:]} differ from the model's {categories[1:]}"
            )

    def image(self, index: int, fit: tuple[int, int] | None = None) -> Image.Image:
        """Image ``index``, RGB and upright; a folder's photo is decoded at a reduced scale that still covers ``fit``."""
        if self.dataset is not None:
            return open_image(self.dataset.images[index])
        return decode_image(self.paths[index].read_bytes(), self.max_pixels, fit=fit)[0]

    def canvas(self, index: int, canvas: tuple[int, int]) -> np.ndarray:
        """Image ``index`` letterboxed onto the canvas [H, W]: ndarray[H, W, 3] uint8 RGB."""
        return letterbox(self.image(index, fit=canvas), canvas)[0]

    def batches(self, canvas: tuple[int, int], size: int) -> Iterator[np.ndarray]:
        """The canvases, ``size`` at a time: ndarray[B, H, W, 3] uint8."""
        for start in range(0, len(self), size):
            yield np.stack([self.canvas(i, canvas) for i in range(start, min(start + size, len(self)))])


def _candidates(root: Path) -> tuple[list[Path], CocoDataset | None]:
    if not root.is_dir():
        raise CalibrationError(f"{root}: no such folder (give a folder of images, or a COCO data set directory)")
    if (root / ANNOTATIONS_FILE).is_file():
        dataset = load_dataset(root, check_files=False)  # a missing image is skipped as an unreadable one
        return [record.path for record in dataset.images], dataset
    paths = sorted(path for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    return paths, None


def _problem(path: Path, record: ImageRecord | None, max_pixels: int) -> str | None:
    """Why the image cannot be used, or None."""
    try:
        if record is not None:
            open_image(record)
        else:
            decode_image(path.read_bytes(), max_pixels, fit=CHECK_SIZE)  # a JPEG is checked at 1/8 scale: the whole stream, fast
    except (DatasetError, ServiceError, OSError) as error:
        return str(error).removeprefix(f"{path}: ")
    return None


def read_image_set(root: Path, minimum: int, max_pixels: int, what: str = "calibration") -> ImageSet:
    """The readable images of ``root`` (a folder of images or a COCO data set); at least ``minimum`` of them, else
    CalibrationError naming the folder. ``what`` names the set's use in the messages."""
    root = Path(root)
    paths, dataset = _candidates(root)
    if not paths:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise CalibrationError(f"{root}: no images in this folder or its subfolders ({suffixes} files, or a COCO data set's)")
    records = dataset.images if dataset is not None else [None] * len(paths)
    problems = {path: _problem(path, record, max_pixels) for path, record in zip(paths, records, strict=True)}
    skipped = {path: problem for path, problem in problems.items() if problem is not None}
    if skipped:
        named = "; ".join(f"{path.relative_to(root)} ({problem})" for path, problem in list(skipped.items())[:LISTED_SKIPS])
        more = f"; and {len(skipped) - LISTED_SKIPS} more" if len(skipped) > LISTED_SKIPS else ""
        log.warning("%s: skipped %d unreadable image(s) of %d: %s%s", root, len(skipped), len(paths), named, more)
    kept = [index for index, path in enumerate(paths) if path not in skipped]
    if len(kept) < minimum:
        unreadable = f" ({len(skipped)} more unreadable)" if skipped else ""
        raise CalibrationError(f"{root}: {len(kept)} readable images{unreadable}; {what} needs at least {minimum}")
    return ImageSet(root, tuple(paths), dataset, max_pixels).subset(kept)
