"""What a detector returns for one image, as the evaluation, the parity check and the package runner share it.

Light on purpose (NumPy only): ``build-engine`` and the parity check import it without torch or pycocotools.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.agreement import Detections  # one image's detections, as the service's check of a precision reads them too

# Runs a model on canvases (ndarray[B, H, W, 3] uint8 RGB) and returns each one's detections.
BatchPredictor = Callable[[np.ndarray], list[Detections]]
