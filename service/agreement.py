"""How far one graph's detections are from another's: the measure of the export's accuracy gate, and of the
service's check of a reduced precision on the machine that would serve it (NumPy only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """One image's detections. boxes (ndarray[N, 4]): x1, y1, x2, y2 in canvas pixels; scores (ndarray[N]); labels (ndarray[N])."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (ndarray[N, 4]), b (ndarray[M, 4]): x1, y1, x2, y2 -> IoU (ndarray[N, M])."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def found_again(reference: Sequence[Detections], candidate: Sequence[Detections], score: float, min_iou: float) -> tuple[float, int]:
    """(share found, how many): the reference's detections at ``score`` that a candidate detection at ``score`` of the
    same label overlaps with IoU >= ``min_iou``, image by image."""
    found = total = 0
    for ref, got in zip(reference, candidate, strict=True):
        ref_keep, got_keep = ref.scores >= score, got.scores >= score
        total += int(ref_keep.sum())
        if ref_keep.any() and got_keep.any():
            iou = box_iou(ref.boxes[ref_keep], got.boxes[got_keep])
            same = ref.labels[ref_keep][:, None] == got.labels[got_keep][None, :]
            found += int(((iou >= min_iou) & same).any(axis=1).sum())
    return (found / total if total else 0.0), total
