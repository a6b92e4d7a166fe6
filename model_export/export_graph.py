"""Faster R-CNN as batched tensor code, for export: the whole detector in one graph with a dynamic batch.

torchvision's detection models loop over images in Python (per-image NMS,
splits by proposal count); traced, those loops freeze to the example's batch
size. This module calls the trained submodules (backbone with FPN, RPN head,
box head and predictor) and re-implements the glue between them on padded
``[B, ...]`` tensors:

* every per-image variable-length set is a fixed-size, score-sorted tensor
  plus a validity mask (invalid entries carry the score -1);
* NMS runs once per batch as ONNX NonMaxSuppression, with the per-level (RPN)
  or per-class (head) grouping expressed as NMS classes;
* every top-k size is a constant, computed here from the fixed canvas.

Each step mirrors the torchvision code it replaces (named in the comments), so
that each image's detections equal the eager model's for that image alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList

from model_export.onnx_ops import batched_multiclass_nms, roi_align

INVALID = -1.0
# NMS drops candidates at or below this score: every invalid entry, no valid one (scores are >= 0).
NMS_SCORE_FLOOR = -0.5
# TensorRT's TopK needs K below 3840; candidates for the final NMS are capped at this.
MAX_NMS_CANDIDATES = 3000


@dataclass(frozen=True)
class GraphConstants:
    """What a fixed canvas makes constant: per-level sizes, top-k sizes and RoI level mapping."""

    canvas: tuple[int, int]
    level_sizes: list[int]  # anchors per RPN level
    level_top_n: list[int]  # pre-NMS top-k per level (torchvision's _topk_min)
    proposals: int  # post-NMS top-k over all levels
    roi_scales: list[float]  # spatial scale of each pooled level
    roi_k_min: int
    roi_k_max: int
    candidates: int  # candidates kept for the final NMS
    max_detections: int


def decode_boxes(deltas: Tensor, reference: Tensor, weights: tuple[float, float, float, float], clip: float) -> Tensor:
    """torchvision's BoxCoder.decode_single, on any leading shape.

    deltas (Tensor[..., 4]) and reference (Tensor[..., 4], broadcastable) -> boxes (Tensor[..., 4]): x1, y1, x2, y2.
    """
    widths = reference[..., 2] - reference[..., 0]
    heights = reference[..., 3] - reference[..., 1]
    ctr_x = reference[..., 0] + 0.5 * widths
    ctr_y = reference[..., 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=clip)
    dh = torch.clamp(deltas[..., 3] / wh, max=clip)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = 0.5 * (torch.exp(dw) * widths)
    half_h = 0.5 * (torch.exp(dh) * heights)
    return torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=-1)


def clip_to_canvas(boxes: Tensor, canvas: tuple[int, int]) -> Tensor:
    """torchvision's clip_boxes_to_image for boxes (Tensor[..., 4]) on a canvas [H, W]."""
    x = boxes[..., 0::2].clamp(min=0, max=canvas[1])
    y = boxes[..., 1::2].clamp(min=0, max=canvas[0])
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def is_large_enough(boxes: Tensor, min_size: float) -> Tensor:
    """torchvision's remove_small_boxes as a mask."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


def keep_mask(selected: Tensor, batch: int, count: int) -> Tensor:
    """A [batch, count] bool mask, true at the (batch, _, index) rows NMS selected."""
    flat = selected[:, 0] * count + selected[:, 2]
    mask = torch.zeros(batch * count, dtype=torch.bool, device=selected.device)
    mask = mask.index_fill(0, flat, True)
    return mask.reshape(batch, count)


def gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """values (Tensor[B, N, D]), index (Tensor[B, K]) -> Tensor[B, K, D]."""
    return torch.gather(values, 1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


class BatchedFasterRCNN(nn.Module):
    """A trained torchvision FasterRCNN as a batched graph on a fixed canvas.

    forward(images (uint8 [B, H, W, 3] RGB), score_threshold ([] float32), iou_threshold ([] float32))
    -> num_detections (int64 [B]), boxes (float32 [B, K, 4], canvas pixels), scores (float32 [B, K],
    descending), labels (int64 [B, K]). Rows past num_detections are zeros.
    """

    def __init__(self, model: FasterRCNN, canvas: tuple[int, int], max_detections: int) -> None:
        super().__init__()
        model = model.eval()
        self.backbone = model.backbone
        self.rpn_head = model.rpn.head
        self.box_head = model.roi_heads.box_head
        self.box_predictor = model.roi_heads.box_predictor
        pooled_names = list(model.roi_heads.box_roi_pool.featmap_names)
        self.roi_output_size = int(model.roi_heads.box_roi_pool.output_size[0])
        self.roi_sampling_ratio = int(model.roi_heads.box_roi_pool.sampling_ratio)
        self.rpn_nms_thresh = float(model.rpn.nms_thresh)
        self.rpn_min_size = float(model.rpn.min_size)
        self.rpn_score_thresh = float(model.rpn.score_thresh)
        self.rpn_weights = tuple(model.rpn.box_coder.weights)
        self.box_weights = tuple(model.roi_heads.box_coder.weights)
        self.rpn_clip = float(model.rpn.box_coder.bbox_xform_clip)
        self.box_clip = float(model.roi_heads.box_coder.bbox_xform_clip)
        self.num_classes = int(self.box_predictor.cls_score.out_features)
        self.register_buffer("mean", torch.tensor(model.transform.image_mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(model.transform.image_std).view(1, 3, 1, 1) * 255)
        with torch.no_grad():
            feature_names = list(self.backbone(torch.zeros(1, 3, *canvas)).keys())
        # MultiScaleRoIAlign pools the maps it names that the backbone has (mobilenet's FPN has fewer than the default four).
        self.featmap_names = [name for name in pooled_names if name in feature_names]
        self.constants, anchors = self._constants(model, canvas, max_detections)
        scales = self.constants.roi_scales
        self.register_buffer("level_ratios", torch.tensor([scale / scales[0] for scale in scales]))
        for level, level_anchors in enumerate(anchors):
            self.register_buffer(f"anchors_{level}", level_anchors)

    def _constants(self, model: FasterRCNN, canvas: tuple[int, int], max_detections: int) -> tuple[GraphConstants, list[Tensor]]:
        with torch.no_grad():
            features = self.backbone(torch.zeros(1, 3, *canvas))
            anchors = model.rpn.anchor_generator(ImageList(torch.zeros(1, 3, *canvas), [canvas]), list(features.values()))[0]
        per_location = model.rpn.anchor_generator.num_anchors_per_location()
        level_sizes = [a * f.shape[-2] * f.shape[-1] for a, f in zip(per_location, features.values(), strict=False)]
        level_top_n = [min(model.rpn._pre_nms_top_n["testing"], n) for n in level_sizes]
        # torchvision's MultiScaleRoIAlign infers each level's scale as a power of two from its size.
        roi_scales = [2.0 ** round(math.log2(features[name].shape[-2] / canvas[0])) for name in self.featmap_names]
        proposals = min(model.rpn._post_nms_top_n["testing"], sum(level_top_n))
        constants = GraphConstants(
            canvas=canvas,
            level_sizes=level_sizes,
            level_top_n=level_top_n,
            proposals=proposals,
            roi_scales=roi_scales,
            roi_k_min=int(-math.log2(roi_scales[0])),
            roi_k_max=int(-math.log2(roi_scales[-1])),
            candidates=min(proposals * (self.num_classes - 1), MAX_NMS_CANDIDATES),
            max_detections=max_detections,
        )
        return constants, list(anchors.split(level_sizes))

    def forward(self, images: Tensor, score_threshold: Tensor, iou_threshold: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = (images.permute(0, 3, 1, 2).float() - self.get_buffer("mean")) / self.get_buffer("std")
        features = self.backbone(x)
        proposals, proposal_valid = self.propose(list(features.values()))
        class_logits, box_regression = self.classify(features, proposals)
        return self.detect(proposals, proposal_valid, class_logits, box_regression, score_threshold, iou_threshold)

    def propose(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The RPN (torchvision's RegionProposalNetwork.forward and filter_proposals).

        Returns proposals (Tensor[B, P, 4]) by descending objectness and their validity (Tensor[B, P] bool).
        """
        c = self.constants
        logits, deltas = self.rpn_head(features)
        boxes, scores, levels = [], [], []
        for level, (level_logits, level_deltas) in enumerate(zip(logits, deltas, strict=False)):
            batch, anchors_per_location, height, width = level_logits.shape
            # permute_and_flatten: (B, A, H, W) -> (B, H * W * A)
            objectness = level_logits.permute(0, 2, 3, 1).reshape(batch, -1)
            level_deltas = level_deltas.view(batch, anchors_per_location, 4, height, width).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4)
            top_logits, top_index = objectness.topk(c.level_top_n[level], dim=1)
            anchors = getattr(self, f"anchors_{level}")[top_index]
            boxes.append(decode_boxes(gather_rows(level_deltas, top_index), anchors, self.rpn_weights, self.rpn_clip))
            scores.append(torch.sigmoid(top_logits))
            levels.append(torch.full((c.level_top_n[level],), level, dtype=torch.int64, device=top_logits.device))
        all_boxes = clip_to_canvas(torch.cat(boxes, dim=1), c.canvas)
        all_scores = torch.cat(scores, dim=1)
        valid = is_large_enough(all_boxes, self.rpn_min_size) & (all_scores >= self.rpn_score_thresh)
        all_scores = torch.where(valid, all_scores, INVALID)
        # NMS independently per level: each level is one NMS class.
        level_ids = torch.arange(len(boxes), device=all_scores.device)
        by_level = torch.where(torch.cat(levels)[None, None, :] == level_ids[None, :, None], all_scores[:, None, :], INVALID)
        iou = torch.tensor(self.rpn_nms_thresh, device=all_scores.device)
        selected = batched_multiclass_nms(all_boxes, by_level, c.proposals, iou, NMS_SCORE_FLOOR)
        kept = torch.where(keep_mask(selected, all_scores.shape[0], all_scores.shape[1]), all_scores, INVALID)
        top_scores, top_index = kept.topk(c.proposals, dim=1)
        return gather_rows(all_boxes, top_index), top_scores > NMS_SCORE_FLOOR

    def classify(self, features: dict[str, Tensor], proposals: Tensor) -> tuple[Tensor, Tensor]:
        """MultiScaleRoIAlign, box head and predictor on all B * P proposals.

        Returns class_logits (Tensor[B * P, C]) and box_regression (Tensor[B * P, C * 4]).
        """
        c = self.constants
        batch, count = proposals.shape[0], proposals.shape[1]
        rois = proposals.reshape(-1, 4)
        batch_indices = torch.arange(batch, device=rois.device)[:, None].expand(batch, count).reshape(-1)
        # LevelMapper: the FPN paper's level for each box, canonical size 224 at level 4.
        size = torch.sqrt((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]))
        target = torch.floor(4 + torch.log2(size / 224) + torch.tensor(1e-6, dtype=size.dtype))
        target = torch.clamp(target, min=c.roi_k_min, max=c.roi_k_max).to(torch.int64) - c.roi_k_min
        # One RoiAlign for all levels, with no data-dependent gather: the levels are stacked along the
        # batch axis (level-major), each padded to the largest level's size, and a box on level l is
        # given in level-0 units (times the power of two s_l / s_0, which is exact) with batch index
        # l * B + b. The padding repeats the edge: a box clipped to the canvas samples at most up to
        # the level's last row and column, where torchvision clamps to the edge, and never beyond.
        first = features[self.featmap_names[0]]
        height, width = first.shape[-2], first.shape[-1]
        stacked = torch.cat([self._pad_to(features[name], height, width) for name in self.featmap_names], dim=0)
        to_level = self.get_buffer("level_ratios")[target]
        pooled = roi_align(
            stacked,
            rois * to_level[:, None],
            target * batch + batch_indices,
            c.roi_scales[0],
            self.roi_output_size,
            self.roi_sampling_ratio,
        )
        return self.box_predictor(self.box_head(pooled))

    @staticmethod
    def _pad_to(feature: Tensor, height: int, width: int) -> Tensor:
        """Repeats the last column and row up to [..., height, width]: Slice, Expand and Concat, where an
        edge-mode Pad is not sure to be imported natively by every TensorRT version."""
        pad_h, pad_w = height - feature.shape[-2], width - feature.shape[-1]
        if pad_w:
            feature = torch.cat([feature, feature[..., -1:].expand(-1, -1, -1, pad_w)], dim=-1)
        if pad_h:
            feature = torch.cat([feature, feature[..., -1:, :].expand(-1, -1, pad_h, -1)], dim=-2)
        return feature

    def detect(
        self,
        proposals: Tensor,
        proposal_valid: Tensor,
        class_logits: Tensor,
        box_regression: Tensor,
        score_threshold: Tensor,
        iou_threshold: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """torchvision's RoIHeads.postprocess_detections, padded to K rows per image."""
        c = self.constants
        batch, count = proposals.shape[0], proposals.shape[1]
        classes = self.num_classes - 1
        deltas = box_regression.reshape(batch, count, self.num_classes, 4)[:, :, 1:]
        boxes = clip_to_canvas(decode_boxes(deltas, proposals[:, :, None, :], self.box_weights, self.box_clip), c.canvas)
        scores = torch.softmax(class_logits, -1).reshape(batch, count, self.num_classes)[:, :, 1:]
        valid = (scores > score_threshold) & is_large_enough(boxes, 1e-2) & proposal_valid[:, :, None]
        # Flattened proposal-major, class-minor, as torchvision's reshape(-1) of [P, C - 1].
        scores = torch.where(valid, scores, INVALID).reshape(batch, count * classes)
        boxes = boxes.reshape(batch, count * classes, 4)
        top_scores, top_index = scores.topk(c.candidates, dim=1)
        top_boxes = gather_rows(boxes, top_index)
        top_labels = top_index % classes + 1
        # Per-class NMS: each candidate scores only in its own class's row.
        class_ids = torch.arange(1, classes + 1, device=scores.device)
        by_class = torch.where(top_labels[:, None, :] == class_ids[None, :, None], top_scores[:, None, :], INVALID)
        selected = batched_multiclass_nms(top_boxes, by_class, c.max_detections, iou_threshold, NMS_SCORE_FLOOR)
        kept = torch.where(keep_mask(selected, batch, c.candidates), top_scores, INVALID)
        return self._pad_detections(kept, top_boxes, top_labels)

    def _pad_detections(self, kept: Tensor, boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c = self.constants
        k = min(c.max_detections, c.candidates)
        scores, index = kept.topk(k, dim=1)
        valid = scores > NMS_SCORE_FLOOR
        boxes = torch.where(valid[..., None], gather_rows(boxes, index), 0.0)
        labels = torch.where(valid, torch.gather(labels, 1, index), 0)
        scores = torch.where(valid, scores, 0.0)
        if k < c.max_detections:
            pad = c.max_detections - k
            boxes = nn.functional.pad(boxes, (0, 0, 0, pad))
            scores = nn.functional.pad(scores, (0, pad))
            labels = nn.functional.pad(labels, (0, pad))
        return valid.sum(dim=1), boxes, scores, labels
