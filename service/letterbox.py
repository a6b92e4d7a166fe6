"""Letterboxing: fitting an image onto the model's fixed canvas, and back.

The image is scaled by one factor (aspect ratio kept) so that it fits the
canvas, placed at the top-left corner, and the rest is filled with grey.
A box in canvas pixels maps back to the image by dividing by that factor.
This module uses only Pillow and NumPy, so training and serving share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """Where an image of ``width`` x ``height`` lies on the canvas: scaled by ``scale``, at (0, 0)."""

    width: int
    height: int
    scale: float

    def boxes_to_image(self, boxes: np.ndarray) -> np.ndarray:
        """boxes (ndarray[N, 4]): x1, y1, x2, y2 in canvas pixels -> image pixels, clipped to the image."""
        mapped = boxes / self.scale
        mapped[:, 0::2] = np.clip(mapped[:, 0::2], 0, self.width)
        mapped[:, 1::2] = np.clip(mapped[:, 1::2], 0, self.height)
        return mapped


def fit_scale(width: int, height: int, canvas: tuple[int, int]) -> float:
    """The largest scale at which a ``width`` x ``height`` image fits the canvas [H, W]."""
    return min(canvas[0] / height, canvas[1] / width)


def letterbox(image: Image.Image, canvas: tuple[int, int], scale: float | None = None) -> tuple[np.ndarray, Letterbox]:
    """Scales an RGB image onto a canvas [H, W].

    Returns the canvas (ndarray[H, W, 3] uint8) and where the image lies on it.
    ``scale`` defaults to the fitting scale; a smaller one leaves more padding.
    """
    fitting = fit_scale(image.width, image.height, canvas)
    scale = fitting if scale is None else min(scale, fitting)
    new_width = max(1, min(canvas[1], round(image.width * scale)))
    new_height = max(1, min(canvas[0], round(image.height * scale)))
    resized = image if (new_width, new_height) == image.size else image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    out = np.full((canvas[0], canvas[1], 3), PAD_VALUE, dtype=np.uint8)
    out[:new_height, :new_width] = np.asarray(resized.convert("RGB"))
    return out, Letterbox(image.width, image.height, scale)
