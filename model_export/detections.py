"""What a detector returns for one image, as the evaluation, the parity check and the package runner share it.

Light on purpose (NumPy only): ``build-engine`` and the parity check import it without torch or pycocotools.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """One image's detections. boxes (ndarray[N, 4]): x1, y1, x2, y2 in canvas pixels."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


# Runs a model on canvases (ndarray[B, H, W, 3] uint8 RGB) and returns each one's detections.
BatchPredictor = Callable[[np.ndarray], list[Detections]]
