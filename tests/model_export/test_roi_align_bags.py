"""Training's RoIAlign (model_export.roi_align_bags) against torchvision's: the same values and gradients."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from model_export.architectures import COMPACT_ARCH, build_model
from model_export.roi_align_bags import BagsMultiScaleRoIAlign, bags_roi_align, roi_align_by_bags

# float32 sums in another order: a few ulps of values and gradients of order 10.
TOLERANCE = 1e-4


def _rois(images: int, count: int, canvas: float, seed: int) -> torch.Tensor:
    """Boxes grouped by image, as torchvision's poolers order them: of every size, some past the canvas on any side,
    a few thinner than a feature-map cell, a few wholly outside it; the last image gets none."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator) * canvas * 1.2 - canvas * 0.1
    size = torch.rand(count, 2, generator=generator) ** 2 * canvas * 0.6 + 0.2
    boxes = torch.cat([corner, corner + size], dim=1)
    boxes[:4, 2:] = boxes[:4, :2] + 0.3  # thinner than a cell at every scale
    boxes[4:6] = torch.tensor([canvas * 1.5, canvas * 1.5, canvas * 1.8, canvas * 1.9])  # past the map
    boxes[6:8] = torch.tensor([-canvas, -canvas, -canvas * 0.5, -canvas * 0.2])  # before it
    image = torch.sort(torch.randint(0, images - 1, (count,), generator=generator)).values
    return torch.cat([image[:, None].float(), boxes], dim=1)


@pytest.mark.parametrize(
    ("shape", "scale", "output_size", "ratio"),
    [
        ((4, 16, 40, 40), 1 / 8, (7, 7), 2),  # the compact model's finest level on its 320 canvas
        ((3, 8, 10, 13), 1 / 32, (7, 7), 2),  # coarse and not square
        ((2, 5, 9, 7), 1 / 4, (5, 3), 1),
        ((2, 4, 12, 12), 1 / 2, (2, 4), 3),
    ],
    ids=["stride-8", "stride-32-wide", "ratio-1-not-square-bins", "ratio-3"],
)
def test_values_and_gradients_equal_torchvision(
    shape: tuple[int, int, int, int], scale: float, output_size: tuple[int, int], ratio: int
) -> None:
    torch.manual_seed(0)
    features = torch.randn(shape, requires_grad=True)
    rois = _rois(shape[0], 300, shape[-1] / scale, seed=1)
    expected = roi_align(features, rois, output_size, spatial_scale=scale, sampling_ratio=ratio, aligned=False)
    weights = torch.randn(expected.shape)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), features)

    got = roi_align_by_bags(features, rois, output_size, scale, ratio)
    (got_grad,) = torch.autograd.grad((got * weights).sum(), features)

    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=TOLERANCE)
    torch.testing.assert_close(got_grad, expected_grad, atol=TOLERANCE, rtol=TOLERANCE)
    assert expected[4:8].abs().max() == 0 and got[4:8].abs().max() == 0, "boxes off the map read nothing"


def test_under_bfloat16_autocast_it_answers_as_torchvision_in_bfloat16() -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 8, 20, 20).bfloat16()
    rois = _rois(2, 50, 160, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = roi_align(features, rois, (7, 7), spatial_scale=1 / 8, sampling_ratio=2, aligned=False)
        got = roi_align_by_bags(features, rois, (7, 7), 1 / 8, 2)
    assert got.dtype == expected.dtype == torch.bfloat16
    # Both pool in float32 and round to bfloat16: at most a rounding apart (one bfloat16 step, up to 2**-7 of the value).
    torch.testing.assert_close(got.float(), expected.float(), atol=1e-6, rtol=2**-7)


def test_no_boxes_pool_to_an_empty_batch() -> None:
    features = torch.randn(2, 6, 10, 10, requires_grad=True)
    pooled = roi_align_by_bags(features, torch.zeros(0, 5), (7, 7), 1 / 8, 2)
    assert pooled.shape == (0, 6, 7, 7)
    pooled.sum().backward()
    assert features.grad is not None and not features.grad.any()


def _compact_features(images: int) -> tuple[OrderedDict[str, torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
    """The compact model's FPN maps for a batch on its 320 canvas, and boxes spread over every FPN level's sizes."""
    torch.manual_seed(3)
    model = build_model(COMPACT_ARCH, 8, (320, 320))
    features = model.backbone(torch.rand(images, 3, 320, 320))
    rois = _rois(images + 1, 400, 320, seed=4)  # images + 1: the last image's share is empty, so every image has boxes
    # torchvision maps a box to the stride-16 level from 224 px on (sqrt of its area) and to stride 32 from 448, past
    # this canvas: a few of each per image.
    large = torch.tensor([[0.0, 0.0, 300.0, 260.0], [40.0, 30.0, 310.0, 320.0], [-60.0, -50.0, 400.0, 420.0]])
    boxes = [torch.cat([rois[rois[:, 0] == index, 1:], large + index]) for index in range(images)]
    return features, boxes, [(320, 320)] * images


@pytest.mark.parametrize("levels", [["0", "1", "2"], ["1"]], ids=["three-levels", "one-level"])
def test_multiscale_training_pass_equals_torchvision_on_every_level(levels: list[str]) -> None:
    features, boxes, shapes = _compact_features(images=3)
    leaves = [feature.detach().requires_grad_() for feature in features.values()]
    inputs = OrderedDict(zip(features, leaves, strict=True))
    reference = MultiScaleRoIAlign(levels, 7, 2)
    bags = BagsMultiScaleRoIAlign(levels, 7, 2).train()

    expected = reference(inputs, boxes, shapes)
    if len(levels) > 1:
        assert set(reference.map_levels(boxes).tolist()) == {0, 1, 2}, "the boxes should reach every level"  # type: ignore[misc]
    weights = torch.randn(expected.shape)
    pooled = [leaf for name, leaf in inputs.items() if name in levels]
    expected_grads = torch.autograd.grad((expected * weights).sum(), pooled)
    got = bags(inputs, boxes, shapes)
    got_grads = torch.autograd.grad((got * weights).sum(), pooled)

    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=TOLERANCE)
    for got_grad, expected_grad in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, atol=TOLERANCE, rtol=TOLERANCE)


def test_the_swap_lasts_the_context_and_eval_mode_stays_torchvision() -> None:
    model = build_model(COMPACT_ARCH, 8, (320, 320))
    original = model.roi_heads.box_roi_pool
    features, boxes, shapes = _compact_features(images=2)
    with bags_roi_align(model):
        pooler = model.roi_heads.box_roi_pool
        assert isinstance(pooler, BagsMultiScaleRoIAlign)
        assert (pooler.featmap_names, pooler.output_size, pooler.sampling_ratio) == (["0", "1", "2"], (7, 7), 2)
        model.eval()
        with torch.no_grad():
            assert torch.equal(pooler(features, boxes, shapes), original(features, boxes, shapes))
    assert model.roi_heads.box_roi_pool is original

    with pytest.raises(RuntimeError, match="mid-training"), bags_roi_align(model):
        raise RuntimeError("mid-training")
    assert model.roi_heads.box_roi_pool is original, "an error in training puts torchvision's pooler back as well"


def test_adaptive_sampling_keeps_torchvision() -> None:
    # fasterrcnn_resnet50_fpn samples 2 points a bin; a pooler with sampling_ratio 0 picks a count per box.
    model = build_model("fasterrcnn_resnet50_fpn", 3, (128, 128))
    model.roi_heads.box_roi_pool = adaptive = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 0)
    with bags_roi_align(model):
        assert model.roi_heads.box_roi_pool is adaptive
