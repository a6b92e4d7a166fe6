"""The supported Faster R-CNN architectures, built from torchvision's parts.

Every builder takes the number of classes (background included) and the canvas
[H, W] the model sees, and returns a ``torchvision.models.detection.FasterRCNN``
whose transform neither resizes a canvas-sized input nor pads it further.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import (
    FasterRCNN,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from model_export.arch_names import ARCH_NAMES, COMPACT_ARCH

# The compact model's widths: stem, then the stages at strides 4, 8, 16, 32.
COMPACT_STEM = 24
COMPACT_STAGES = (32, 64, 128, 192)
COMPACT_FPN_CHANNELS = 64
COMPACT_HEAD_DIM = 768
# Two sizes and three ratios per level; levels at strides 8, 16, 32, 64.
COMPACT_ANCHOR_SIZES = ((12, 20), (32, 48), (64, 96), (128, 224))


def _conv_gn(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: batches of a few images on a CPU give BatchNorm too noisy statistics.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(8, out_channels),
        nn.ReLU(inplace=True),
    )


class CompactBackbone(nn.Module):
    """A plain conv net with an FPN over strides 8, 16 and 32, plus a max-pooled level at 64.

    Returns an OrderedDict of feature maps ``"0".."2"`` and ``"pool"``, each with
    ``out_channels`` channels, as torchvision's ``BackboneWithFPN`` does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_gn(3, COMPACT_STEM, 2)
        stages = []
        in_channels = COMPACT_STEM
        for width in COMPACT_STAGES:
            stages.append(nn.Sequential(_conv_gn(in_channels, width, 2), _conv_gn(width, width, 1)))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(list(COMPACT_STAGES[1:]), COMPACT_FPN_CHANNELS, extra_blocks=LastLevelMaxPool())
        self.out_channels = COMPACT_FPN_CHANNELS

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.stem(x)
        features = OrderedDict()
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index >= 1:
                features[str(index - 1)] = x
        return self.fpn(features)


def fasterrcnn_compact_fpn(num_classes: int, canvas: tuple[int, int], **kwargs: Any) -> FasterRCNN:
    """The project's default: 4.1M parameters (with 8 classes); how it was trained is in models/default/README.md."""
    anchor_generator = AnchorGenerator(COMPACT_ANCHOR_SIZES, ((0.5, 1.0, 2.0),) * len(COMPACT_ANCHOR_SIZES))
    roi_pool = MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(COMPACT_FPN_CHANNELS * 7 * 7, COMPACT_HEAD_DIM)
    options: dict[str, Any] = {
        # Few objects per image (at most a dozen): a few hundred proposals in training, and at test time
        # the count chosen on the validation set (the model card has the comparison and the speed-up).
        "rpn_pre_nms_top_n_train": 600,
        "rpn_post_nms_top_n_train": 300,
        "rpn_pre_nms_top_n_test": 200,
        "rpn_post_nms_top_n_test": 100,
        "box_batch_size_per_image": 256,
        "box_score_thresh": 0.05,
    }
    options.update(kwargs)
    return FasterRCNN(
        CompactBackbone(),
        rpn_anchor_generator=anchor_generator,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(COMPACT_HEAD_DIM, num_classes),
        **_canvas_transform(canvas),
        **options,
    )


def _canvas_transform(canvas: tuple[int, int]) -> dict[str, Any]:
    """Transform options under which a canvas-sized image is neither resized nor padded."""
    return {"min_size": min(canvas), "max_size": max(canvas)}


def _torchvision_builder(factory: Callable[..., FasterRCNN]) -> Callable[..., FasterRCNN]:
    def build(num_classes: int, canvas: tuple[int, int], **kwargs: Any) -> FasterRCNN:
        # weights_backbone=None: nothing is downloaded; pretrained weights come through load_pretrained().
        return factory(weights=None, weights_backbone=None, num_classes=num_classes, **_canvas_transform(canvas), **kwargs)

    build.__name__ = factory.__name__
    return build


ARCHITECTURES: dict[str, Callable[..., FasterRCNN]] = {
    COMPACT_ARCH: fasterrcnn_compact_fpn,
    "fasterrcnn_resnet50_fpn": _torchvision_builder(fasterrcnn_resnet50_fpn),
    "fasterrcnn_resnet50_fpn_v2": _torchvision_builder(fasterrcnn_resnet50_fpn_v2),
    "fasterrcnn_mobilenet_v3_large_fpn": _torchvision_builder(fasterrcnn_mobilenet_v3_large_fpn),
    "fasterrcnn_mobilenet_v3_large_320_fpn": _torchvision_builder(fasterrcnn_mobilenet_v3_large_320_fpn),
}
if set(ARCHITECTURES) != set(ARCH_NAMES):  # the command line offers ARCH_NAMES: the two lists must not drift
    raise ImportError(f"model_export.arch_names lists {sorted(ARCH_NAMES)}, but builders exist for {sorted(ARCHITECTURES)}")


def build_model(arch: str, num_classes: int, canvas: tuple[int, int], **kwargs: Any) -> FasterRCNN:
    """Builds an architecture by name with randomly initialised weights."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
    if num_classes < 2:
        raise ValueError(f"num_classes should count the background and at least one class, got {num_classes}")
    return ARCHITECTURES[arch](num_classes, canvas, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
