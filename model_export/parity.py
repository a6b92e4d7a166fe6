"""Matching two models' detections on the same images: the parity check of an export.

A detection of one side is matched by one of the other with the same label,
IoU >= ``min_iou`` and a score within ``score_tolerance``. Detections whose
outcome is decided by float noise are left out of the match, as the issue
describes: scores that tie with another detection's (NMS order among ties is
implementation-defined), scores within the tolerance of the score threshold,
and, when an image hits the K-detection cap, scores within the tolerance of the
last one kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_export.detections import Detections
from service.agreement import box_iou


@dataclass
class ParityReport:
    compared: int = 0  # detections taken into the match, both sides together
    matched: int = 0
    max_box_delta: float = 0.0  # largest coordinate difference of a matched pair, canvas pixels
    max_score_delta: float = 0.0
    min_iou: float = 1.0

    @property
    def matched_fraction(self) -> float:
        """Matched over compared; 0.0 when nothing was compared, so that no ``>=`` check reads an empty match as parity."""
        return self.matched / self.compared if self.compared else 0.0

    def add(self, other: ParityReport) -> None:
        self.compared += other.compared
        self.matched += other.matched
        self.max_box_delta = max(self.max_box_delta, other.max_box_delta)
        self.max_score_delta = max(self.max_score_delta, other.max_score_delta)
        self.min_iou = min(self.min_iou, other.min_iou)

    def to_json(self) -> dict[str, float | int]:
        return {
            "compared": self.compared,
            "matched": self.matched,
            "matched_fraction": round(self.matched_fraction, 6),
            "max_box_delta_px": float(self.max_box_delta),
            "max_score_delta": float(self.max_score_delta),
            "min_iou": float(self.min_iou),
        }


def _decided_by_noise(detections: Detections, score_threshold: float, cap: int, tolerance: float) -> np.ndarray:
    scores = detections.scores
    gaps = np.abs(scores[:, None] - scores[None, :]) + np.eye(len(scores)) * 1e9
    tied = (gaps <= tolerance).any(axis=1) if len(scores) > 1 else np.zeros(len(scores), dtype=bool)
    near_threshold = scores <= score_threshold + tolerance
    near_cap = (scores <= scores.min() + tolerance) if len(scores) >= cap else np.zeros(len(scores), dtype=bool)
    return tied | near_threshold | near_cap


def compare_detections(
    reference: Detections,
    candidate: Detections,
    score_threshold: float,
    cap: int,
    min_iou: float = 0.99,
    score_tolerance: float = 1e-3,
    tie_tolerance: float = 1e-5,
) -> ParityReport:
    """Matches one image's detections both ways; see the module's docstring for what is left out."""
    report = ParityReport()
    skip_ref = _decided_by_noise(reference, score_threshold, cap, tie_tolerance)
    skip_cand = _decided_by_noise(candidate, score_threshold, cap, tie_tolerance)
    iou = (
        box_iou(reference.boxes, candidate.boxes)
        if len(reference.boxes) and len(candidate.boxes)
        else np.zeros((len(reference.boxes), len(candidate.boxes)))
    )
    fits = (
        (iou >= min_iou)
        & (reference.labels[:, None] == candidate.labels[None, :])
        & (np.abs(reference.scores[:, None] - candidate.scores[None, :]) <= score_tolerance)
    )
    for side_skip, side_fits in ((skip_ref, fits), (skip_cand, fits.T)):
        report.compared += int((~side_skip).sum())
        report.matched += int((side_fits.any(axis=1) & ~side_skip).sum())
    rows, cols = np.nonzero(fits)
    if rows.size:
        report.max_box_delta = float(np.abs(reference.boxes[rows] - candidate.boxes[cols]).max())
        report.max_score_delta = float(np.abs(reference.scores[rows] - candidate.scores[cols]).max())
        best = np.where(fits, iou, np.inf).min(axis=1)
        report.min_iou = float(best[np.isfinite(best)].min())
    return report
