"""RoIAlign for training on a CPU as a weighted embedding bag: torchvision's numbers, a faster backward.

torchvision's CPU RoIAlign runs on one thread; its backward took about a third
of a training iteration of the compact model on 2 cores. With a fixed sampling
ratio, every output cell of RoIAlign is a weighted sum of 4 * ratio**2 feature
vectors (the bilinear corners of each sample point, averaged): an embedding bag
over the feature map's pixels, whose PyTorch kernels are vectorised and
parallel both ways. Only training uses it; evaluation and export keep
torchvision's op, which is what the ONNX graph holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


def roi_align_by_bags(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int) -> Tensor:
    """torchvision.ops.roi_align(..., aligned=False) for ``sampling_ratio > 0``: rois [K, 5], out [K, C, *output_size].

    In float32 whatever the features' dtype, returned in theirs, as torchvision's op does under autocast.
    """
    with torch.autocast(features.device.type, enabled=False):
        pooled = _pool(features.float(), rois.float(), output_size, spatial_scale, sampling_ratio)
    return pooled.to(features.dtype)


def _pool(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int) -> Tensor:
    images, channels, height, width = features.shape
    ys, xs = _sample_points(rois, output_size, sampling_ratio, spatial_scale)
    rows, row_weights = _corners(ys, height)  # [K, Sy, 2] each: the low and high neighbour
    cols, col_weights = _corners(xs, width)
    # [K, Sy, Sx, 4]: the four bilinear neighbours of every sample point, and their weights in the cell's average.
    pixel = rois[:, 0].long()[:, None, None, None, None] * (height * width) + rows[:, :, None, :, None] * width + cols[:, None, :, None, :]
    weight = row_weights[:, :, None, :, None] * col_weights[:, None, :, None, :] / sampling_ratio**2
    pixel, weight = pixel.flatten(3), weight.flatten(3)
    bags = _by_cell(pixel, output_size, sampling_ratio)
    table = features.permute(0, 2, 3, 1).reshape(images * height * width, channels)
    offsets = torch.arange(0, bags.numel(), bags.shape[1], device=features.device)
    weights = _by_cell(weight, output_size, sampling_ratio).reshape(-1)
    cells = F.embedding_bag(bags.reshape(-1), table, offsets, mode="sum", per_sample_weights=weights)
    return cells.view(len(rois), *output_size, channels).permute(0, 3, 1, 2)


def _sample_points(rois: Tensor, output_size: tuple[int, int], ratio: int, spatial_scale: float) -> tuple[Tensor, Tensor]:
    """Each box's sample coordinates on the feature map, [K, Sy] and [K, Sx], placed as torchvision places them."""
    boxes = rois[:, 1:] * spatial_scale
    # aligned=False: a box is at least one feature-map cell wide and tall.
    width = (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0)
    height = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
    samples_y, samples_x = output_size[0] * ratio, output_size[1] * ratio
    # Sample j of an axis with S samples in all: start + (j + 0.5) * length / S (each bin holds `ratio` of them).
    steps_y = torch.arange(samples_y, dtype=rois.dtype, device=rois.device) + 0.5
    steps_x = torch.arange(samples_x, dtype=rois.dtype, device=rois.device) + 0.5
    return boxes[:, 1, None] + steps_y * (height / samples_y)[:, None], boxes[:, 0, None] + steps_x * (width / samples_x)[:, None]


def _corners(coords: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """One axis of torchvision's bilinear_interpolate: the low and high neighbour of each coordinate and their weights, [..., 2]."""
    inside = ((coords >= -1) & (coords <= size)).to(coords.dtype)  # torchvision reads nothing outside [-1, size]
    clamped = coords.clamp(min=0)
    low = clamped.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, low, low + 1)
    fraction = clamped - low  # at the edge both neighbours are the last cell: the split between them does not matter
    return torch.stack([low, high], -1), torch.stack([(1 - fraction) * inside, fraction * inside], -1)


def _by_cell(values: Tensor, output_size: tuple[int, int], ratio: int) -> Tensor:
    """[K, Sy, Sx, 4] -> [K * Py * Px, ratio * ratio * 4]: the terms of each output cell in one row (its bag)."""
    per_bin = values.unflatten(1, (output_size[0], ratio)).unflatten(3, (output_size[1], ratio))  # [K, Py, r, Px, r, 4]
    return per_bin.permute(0, 1, 3, 2, 4, 5).reshape(-1, ratio * ratio * 4)


class BagsMultiScaleRoIAlign(MultiScaleRoIAlign):
    """MultiScaleRoIAlign whose training pass pools with roi_align_by_bags; in eval mode it is torchvision's."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        if not self.training:
            return super().forward(x, boxes, image_shapes)
        features = _filter_input(x, self.featmap_names)
        # Inferred from the shapes on every call, as cheap as torchvision's cached copy (which eval mode keeps using).
        scales, map_levels = _setup_scales(features, image_shapes, self.canonical_scale, self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = map_levels(boxes) if len(features) > 1 else torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
        pooled = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
            chosen = torch.where(levels == level)[0]
            # Levels may differ in dtype under autocast: each is cast to the first's, as torchvision's pooler does.
            pooled[chosen] = roi_align_by_bags(feature, rois[chosen], self.output_size, scale, self.sampling_ratio).to(pooled.dtype)
        return pooled


@contextmanager
def bags_roi_align(model: nn.Module) -> Iterator[None]:
    """Trains a Faster R-CNN's box head on roi_align_by_bags, and puts torchvision's pooler back afterwards.

    A pooler that samples adaptively (sampling_ratio <= 0) stays: its sample count differs from box to box.
    """
    heads: Any = model.roi_heads if isinstance(model, FasterRCNN) else None
    pooler = heads.box_roi_pool if heads is not None else None
    # Exactly torchvision's class: a subclass may pool otherwise.
    if not (isinstance(pooler, MultiScaleRoIAlign) and type(pooler) is MultiScaleRoIAlign and pooler.sampling_ratio > 0):
        yield
        return
    heads.box_roi_pool = BagsMultiScaleRoIAlign(
        pooler.featmap_names,
        pooler.output_size,
        pooler.sampling_ratio,
        canonical_scale=pooler.canonical_scale,
        canonical_level=pooler.canonical_level,
    )
    try:
        yield
    finally:
        heads.box_roi_pool = pooler
