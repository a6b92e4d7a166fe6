"""Two custom torch ops that export as single standard ONNX nodes: NonMaxSuppression and RoiAlign.

Why custom ops: the exporter has no translation of ``torchvision::nms`` whose
output is ONNX's ``[M, 3]`` (batch, class, box) triples over a whole batch, and
``torchvision::roi_align`` must become ``RoiAlign`` with
``coordinate_transformation_mode="output_half_pixel"`` written explicitly
(torchvision's Faster R-CNN uses ``aligned=False``; since opset 16 a node
without the attribute means ``half_pixel``, i.e. ``aligned=True``).

Each op has an eager implementation with the ONNX operator's semantics (used
when the export wrapper runs in PyTorch), a fake implementation for tracing,
and an onnxscript translation passed to ``torch.onnx.export``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torchvision
from onnxscript import opset18 as op

_LIBRARY = "frcnn_export"


@torch.library.custom_op(f"{_LIBRARY}::nms", mutates_args=())
def batched_multiclass_nms(
    boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou_threshold: torch.Tensor, score_threshold: float
) -> torch.Tensor:
    """ONNX NonMaxSuppression.

    boxes (Tensor[B, N, 4]): x1, y1, x2, y2. scores (Tensor[B, C, N]).
    Returns Tensor[M, 3] int64: (batch, class, box index) of each kept box,
    batch by batch, class by class, by descending score. A box is a candidate
    of a class when its score there is above ``score_threshold``.
    """
    selected = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            candidates = torch.nonzero(scores[b, c] > score_threshold).flatten()
            keep = torchvision.ops.nms(boxes[b, candidates], scores[b, c, candidates], float(iou_threshold))[:max_per_class]
            index = candidates[keep]
            selected.append(torch.stack([torch.full_like(index, b), torch.full_like(index, c), index], dim=1))
    return torch.cat(selected) if selected else boxes.new_zeros((0, 3), dtype=torch.int64)


@batched_multiclass_nms.register_fake
def _(boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou_threshold: torch.Tensor, score_threshold: float) -> torch.Tensor:
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count, 3), dtype=torch.int64)


@torch.library.custom_op(f"{_LIBRARY}::roi_align", mutates_args=())
def roi_align(
    features: torch.Tensor, rois: torch.Tensor, batch_indices: torch.Tensor, spatial_scale: float, output_size: int, sampling_ratio: int
) -> torch.Tensor:
    """ONNX RoiAlign (mode avg, output_half_pixel), as torchvision's ``roi_align(aligned=False)``.

    features (Tensor[B, C, H, W]); rois (Tensor[R, 4]): x1, y1, x2, y2 in canvas
    pixels; batch_indices (Tensor[R]) int64. Returns Tensor[R, C, S, S].
    """
    boxes = torch.cat([batch_indices[:, None].to(rois.dtype), rois], dim=1)
    return torchvision.ops.roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned=False)


@roi_align.register_fake
def _(
    features: torch.Tensor, rois: torch.Tensor, batch_indices: torch.Tensor, spatial_scale: float, output_size: int, sampling_ratio: int
) -> torch.Tensor:
    return features.new_empty((rois.shape[0], features.shape[1], output_size, output_size))


def _nms_onnx(boxes, scores, max_per_class: int, iou_threshold, score_threshold: float):
    max_boxes = op.Constant(value_ints=[max_per_class])
    floor = op.Constant(value_floats=[score_threshold])
    iou = op.Reshape(iou_threshold, op.Constant(value_ints=[1]))  # type: ignore[arg-type]
    return op.NonMaxSuppression(boxes, scores, max_boxes, iou, floor, center_point_box=0)  # type: ignore[arg-type]


def _roi_align_onnx(features, rois, batch_indices, spatial_scale: float, output_size: int, sampling_ratio: int):
    return op.RoiAlign(
        features,
        rois,
        batch_indices,
        coordinate_transformation_mode="output_half_pixel",
        mode="avg",
        output_height=output_size,
        output_width=output_size,
        sampling_ratio=sampling_ratio,
        spatial_scale=spatial_scale,
    )


def translation_table() -> dict[Callable[..., Any], Callable[..., Any]]:
    """What ``torch.onnx.export(custom_translation_table=...)`` needs for these ops."""
    return {
        torch.ops.frcnn_export.nms.default: _nms_onnx,
        torch.ops.frcnn_export.roi_align.default: _roi_align_onnx,
    }
