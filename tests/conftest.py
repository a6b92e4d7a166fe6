"""Shared fixtures: small data sets, models and model packages that the project makes itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.architectures import build_model
from model_export.checkpoint import LoadedModel
from model_export.export import ExportConfig, export_package
from model_export.synth import generate_image
from service.gpu import gpu_problem
from service.letterbox import PAD_VALUE, letterbox


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problem = gpu_problem()
    if problem is None:
        return
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU; {problem}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = REPO / "models" / "default"


CANVAS = (160, 192)
SMALL_CANVAS = (128, 160)
# Fewer proposals than torchvision's defaults keep the big architectures' tests quick; the graph is the same.
SMALL_RPN = {"rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 120}


def sample_canvases(canvas: tuple[int, int], count: int, seed: int = 99) -> np.ndarray:
    """Busy, sparse and blank synthetic scenes letterboxed onto the canvas."""
    canvases = []
    for index in range(count):
        image, _ = generate_image(seed=seed, index=index, empty_fraction=0.0)
        if index % 5 == 4:
            image = image.point(lambda _: PAD_VALUE)
        canvases.append(letterbox(image, canvas)[0])
    return np.stack(canvases)


def make_random_model(arch: str, num_classes: int = 5, canvas: tuple[int, int] = CANVAS, seed: int = 0) -> LoadedModel:
    """A randomly initialised model that behaves like a trained one, so that parity is not decided by ties.

    BatchNorm statistics come from sample images; the RPN's objectness and the
    classifier's logits are spread so that scores are distinct and varied.
    """
    torch.manual_seed(seed)
    model = build_model(arch, num_classes, canvas, **SMALL_RPN)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration batches
        model.backbone.train()
        images = torch.from_numpy(sample_canvases(canvas, 4, seed=seed + 1)).permute(0, 3, 1, 2).float() / 255
        normalized = (images - torch.tensor(model.transform.image_mean)[:, None, None]) / torch.tensor(model.transform.image_std)[
            :, None, None
        ]
        model.backbone(normalized)
        model.eval()
        predictor = model.roi_heads.box_predictor
        predictor.bbox_pred.weight.normal_(0, 0.05 / predictor.bbox_pred.in_features**0.5)
        # Logits with a spread of about 1: scores far from saturating (sigmoid 1.0 ties) and from uniform.
        for layer in (model.rpn.head.cls_logits, predictor.cls_score):
            layer.weight.normal_(0, 1.0)
            layer.bias.normal_(0, 0.3)
        _spread_logits(model, images)
    return LoadedModel(model, arch, ["__background__"] + [f"class{i}" for i in range(1, num_classes)], canvas)


def _spread_logits(model: torch.nn.Module, images: torch.Tensor, target_std: float = 1.0) -> None:
    layers = {"rpn": model.rpn.head.cls_logits, "head": model.roi_heads.box_predictor.cls_score}
    outputs: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda _m, _i, out, key=key: outputs.__setitem__(key, out)) for key, layer in layers.items()]
    model(list(images))
    for hook in hooks:
        hook.remove()
    for key, layer in layers.items():
        logits = outputs[key]
        scale = target_std / float((logits - layer.bias.view(*([1, -1] + [1] * (logits.dim() - 2)))).std())
        layer.weight.mul_(scale)


@pytest.fixture(scope="session")
def random_model():  # type: ignore[no-untyped-def]
    """The factory make_random_model(arch, num_classes, canvas, seed)."""
    return make_random_model


@pytest.fixture(scope="session")
def canvases():  # type: ignore[no-untyped-def]
    """The factory sample_canvases(canvas, count, seed)."""
    return sample_canvases


@pytest.fixture(scope="session")
def small_model() -> LoadedModel:
    """A random compact model on a small canvas, calibrated to behave like a trained one."""
    return make_random_model("fasterrcnn_compact_fpn", num_classes=4, canvas=SMALL_CANVAS, seed=3)


@pytest.fixture(scope="session")
def small_package(tmp_path_factory: pytest.TempPathFactory, small_model: LoadedModel) -> Path:
    """``small_model`` exported as a real package: the model the service and deployment tests serve."""
    package = tmp_path_factory.mktemp("small") / "package"
    config = ExportConfig(
        name="shapes", version="7", max_batch=8, max_detections=30, score_threshold=0.3, parity_images=2, parity_batches=(2,)
    )
    export_package(small_model, package, config)
    return package
