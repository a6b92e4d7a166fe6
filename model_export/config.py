"""The options of each stage, with their defaults: synthetic data, training, export, int8 graph, engine build.

The command line reads its defaults from here, so they are written once. This
module imports nothing heavy: ``python -m model_export --help`` and ``synth``
load no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from model_export.command_errors import CalibrationError, EngineBuildError, ExportError, OptionError

# The canvas (H, W) of a model that has none yet: one built from scratch, or a checkpoint that names none.
DEFAULT_CANVAS = (320, 320)


@dataclass(frozen=True)
class SynthConfig:
    count: int = 100
    seed: int = 0
    # Scales every entry of synth.IMAGE_SIZES; 1.0 keeps them about 320 px.
    size_scale: float = 1.0
    empty_fraction: float = 0.08  # share of images that hold no shape: pure negatives
    # Photo backgrounds (model_export.backgrounds): the share of images drawn on a random crop of a photo (scaled,
    # flipped, colour-jittered) instead of a textured scene. The photos are scikit-image's training photos, its
    # held-out ones (held_out_photos, for check sets only), or the folder `backgrounds`. None: no photo (today's
    # scenes, which the committed default model was trained on) unless photos are asked for, then every image.
    photo_fraction: float | None = None
    backgrounds: Path | None = None
    held_out_photos: bool = False
    # Every image a bare photo crop: no shape, no distractor, no noise; a check set of real photos without objects.
    photos_only: bool = False

    def __post_init__(self) -> None:
        for name in ("empty_fraction", "photo_fraction"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise OptionError(f"{name} should be within 0..1, got {value}")
        if self.backgrounds is not None and self.held_out_photos:
            raise OptionError(f"--backgrounds {self.backgrounds} and --held-out-photos each choose the photos: ask for one")
        if self.photos_asked and self.photo_fraction == 0:
            raise OptionError("photos were asked for (--backgrounds, --held-out-photos or --photos-only) with --photo-fraction 0")
        if self.photos_only and self.photo_fraction not in (None, 1.0):
            raise OptionError(f"--photos-only makes every image a bare photo: --photo-fraction {self.photo_fraction} contradicts it")

    @property
    def photos_asked(self) -> bool:
        return self.backgrounds is not None or self.held_out_photos or self.photos_only

    @property
    def photo_share(self) -> float:
        """The share of images on a photo: photo_fraction, or where it is unset 1.0 if photos are asked for, else 0.0."""
        if self.photo_fraction is not None:
            return self.photo_fraction
        return 1.0 if self.photos_asked else 0.0


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 8
    # A false alarm: a detection at this score or above (the service's default threshold) on an image holding no object.
    false_alarm_score: float = 0.5

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise OptionError(f"batch_size should be at least 1, got {self.batch_size}")
        if not 0 <= self.false_alarm_score <= 1:
            raise OptionError(f"false_alarm_score should be within 0..1, got {self.false_alarm_score}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_iters: int = 300
    grad_clip: float = 10.0
    workers: int = 1
    seed: int = 0
    # Augmentation: images shrink to this fraction of the fitting scale at the least.
    min_scale: float = 0.6
    augment: bool = True
    # bfloat16 autocast: weights and optimizer stay float32; on CPUs with AMX an iteration is about 1.2x faster.
    bf16: bool = False
    # RoIs sampled per image for the box head's loss; None keeps the model's own (torchvision's 512, the compact model's
    # 256). The box head's cost in training grows with it; evaluation and the exported graph do not depend on it.
    box_batch: int | None = None
    max_iters: int | None = None  # stops early, for smoke tests


@dataclass(frozen=True)
class ExportConfig:
    name: str = "default"
    version: str = "1"
    max_batch: int = 16
    max_detections: int = 100
    opset: int = 18
    score_threshold: float = 0.5  # the service's default; the graph takes it at run time
    iou_threshold: float | None = None  # None: the model's own (torchvision's box_nms_thresh)
    # int8: the package gets an int8 graph beside the float one as well (QuantizeConfig, calibration images needed).
    precision: Literal["fp32", "int8"] = "fp32"
    # Parity check: images and batch sizes run through both models.
    parity_images: int = 8
    parity_batches: tuple[int, ...] = (1, 2, 5)
    parity_score_threshold: float = 0.05
    parity_min_matched: float = 0.99

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ExportError(f"max_batch should be at least 1, got {self.max_batch}")
        if self.max_detections < 1:
            raise ExportError(f"max_detections should be at least 1, got {self.max_detections}")
        if not 0 <= self.score_threshold <= 1:
            raise ExportError(f"score_threshold should be within 0..1, got {self.score_threshold}")
        if self.iou_threshold is not None and not 0 <= self.iou_threshold <= 1:
            raise ExportError(f"iou_threshold should be within 0..1, got {self.iou_threshold}")


@dataclass(frozen=True)
class EngineConfig:
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 16
    fp16: bool = False  # build from an fp16 graph made from model.onnx
    int8: bool = False  # build from the package's int8 (Q/DQ) graph, the one its manifest lists
    workspace_mb: int = 2048
    graph: Path | None = None  # build from this graph (fp16, or int8 with Q/DQ nodes) instead of model.onnx

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise EngineBuildError(
                f"the batch profile should satisfy 1 <= min <= opt <= max, got {self.min_batch}:{self.opt_batch}:{self.max_batch}"
            )
        # Each of the three names the one graph TensorRT parses, whose precision is the engine's: two would contradict.
        asked = {"--fp16": self.fp16, "--int8": self.int8, f"--graph {self.graph}": self.graph is not None}
        sources = [option for option, given in asked.items() if given]
        if len(sources) > 1:
            raise EngineBuildError(
                f"{' and '.join(sources)} each choose the graph the engine is built from (--fp16: one made from model.onnx, "
                "--int8: the package's int8 graph, --graph: this file): ask for one of them"
            )
        if self.workspace_mb < 1:
            raise EngineBuildError(f"--workspace-mb should be at least 1, got {self.workspace_mb}")


def parse_profile(text: str) -> tuple[int, int, int]:
    """``MIN:OPT:MAX`` -> (min, opt, max)."""
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise EngineBuildError(f"--batch should be MIN:OPT:MAX, like 1:8:16, got {text!r}")
    low, opt, high = (int(p) for p in parts)
    return low, opt, high


@dataclass(frozen=True, kw_only=True)
class QuantizeConfig:
    """The int8 graph (``model_export.quantize``): its calibration, and the accuracy gate it must pass against the float graph."""

    # The gate (model_export.accuracy_gate): the mAP may drop at most max_map_drop (mAP@[.5:.95] against a COCO set's
    # annotations, mAP@.5 against the float graph's detections on a plain folder), and at least min_recall of the float graph's detections at
    # score >= match_score must be found again among the int8 graph's at that score (same label, IoU >= match_iou).
    max_map_drop: float = 0.01
    min_recall: float = 0.95
    match_score: float = 0.5
    match_iou: float = 0.5
    map_score_threshold: float = 0.05  # the detections that the mAP scores, as `evaluate` keeps them
    # A calibration folder needs this many readable images; without --val its last val_fraction (at least
    # min_val_images) is held out for the gate, the rest calibrates.
    min_calibration_images: int = 16
    val_fraction: float = 0.25
    min_val_images: int = 8
    # ONNX Runtime's histogram calibration holds every calibrated tensor of a pass in memory: one pass per batch of
    # calibration_batch images, and at most max_calibration_images in all (evenly spaced through the set).
    max_calibration_images: int = 200
    calibration_batch: int = 8
    # Activations are clipped at this percentile of |x|: symmetric int8 with plain min/max cost mAP (model_export.quantize).
    percentile: float = 99.999
    max_image_pixels: int = 40_000_000  # a larger image is unreadable, as the service's default DETECTOR_MAX_IMAGE_PIXELS has it
    batch_size: int = 8  # validation batches
    # Validation canvases written into the package, on which the service checks the int8 graph on its own machine
    # (DETECTOR_PRECISION=auto): enough detections to measure recall, few enough to start in seconds.
    probe_images: int = 32

    def __post_init__(self) -> None:
        for name in ("min_recall", "match_score", "match_iou", "map_score_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise CalibrationError(f"{name} should be within 0..1, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise CalibrationError(f"val_fraction should be between 0 and 1, got {self.val_fraction}")
        if not 1 <= self.min_val_images < self.min_calibration_images:
            raise CalibrationError(
                f"min_val_images should be at least 1 and below min_calibration_images ({self.min_calibration_images}), got {self.min_val_images}"
            )
        for name in ("max_calibration_images", "calibration_batch", "batch_size", "max_image_pixels"):
            if getattr(self, name) < 1:
                raise CalibrationError(f"{name} should be at least 1, got {getattr(self, name)}")
        if not 0 < self.percentile <= 100:
            raise CalibrationError(f"percentile should be within (0, 100], got {self.percentile}")
