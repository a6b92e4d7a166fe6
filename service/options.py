"""A request's detection options: one set of rules for /detect and the v2 protocol.

Each protocol reads its own names (``/detect``'s query, v2's ``parameters``)
into the same types, then :func:`detect_params` checks them against the model.
An option it refuses raises :class:`InvalidParameter`; each protocol answers
it in its own error form (problem JSON 422, or the v2 ``{"error"}`` 400).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from service.errors import InvalidParameter
from service.manifest import ModelManifest

Threshold = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False, description="0..1; default: the model's")]
MaxDetections = Annotated[int, Field(ge=1, description="at most the model's max_detections (its default)")]
ClassNames = Annotated[str | list[str], Field(description="class names to keep (at least one): a list, or comma-separated")]


@dataclass(frozen=True)
class DetectParams:
    """A request's options, checked against the model; None means the manifest's default."""

    score_threshold: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None
    classes: frozenset[int] | None = None  # label ids to keep
    timeout_s: float | None = None
    arrived: float | None = None  # time.monotonic() when the request arrived; the deadline counts from it


def detect_params(
    manifest: ModelManifest,
    *,
    score_threshold: float | None = None,
    iou_threshold: float | None = None,
    max_detections: int | None = None,
    classes: str | list[str] | None = None,
    timeout_s: float | None = None,
    arrived: float | None = None,
) -> DetectParams:
    """The options checked against the model: max_detections within its K, classes among its categories (at least one)."""
    if max_detections is not None and max_detections > manifest.max_detections:
        raise InvalidParameter(f"max_detections should be at most {manifest.max_detections}, got {max_detections}")
    return DetectParams(
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        classes=class_ids(manifest, classes) if classes is not None else None,
        timeout_s=timeout_s,
        arrived=arrived,
    )


def class_ids(manifest: ModelManifest, classes: str | list[str]) -> frozenset[int]:
    """The label ids of the named classes; no name at all is refused, since keeping no class is never what was meant."""
    names = [name.strip() for name in (classes.split(",") if isinstance(classes, str) else classes) if name.strip()]
    if not names:
        raise InvalidParameter(f"classes={classes!r} names no class; give class names, or leave it out to keep every class")
    known = {name: label for label, name in enumerate(manifest.categories) if label > 0}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise InvalidParameter(f"unknown class name(s) {unknown}; this model knows {sorted(known)}")
    return frozenset(known[name] for name in names)
