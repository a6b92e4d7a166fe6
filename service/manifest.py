"""The model package's manifest (``model.json``): written by ``model_export export``, read by the service. One class for both sides."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ONNX_FILE = "model.onnx"
MANIFEST_FILE = "model.json"


class TensorSpec(BaseModel):
    """One input or output of the graph. ``shape`` holds sizes and names: ``batch`` is dynamic."""

    name: str
    dtype: str
    shape: list[int | str]

    def sized(self, sizes: Mapping[str, int]) -> TensorSpec:
        """The spec with the named dimensions that ``sizes`` gives replaced by their sizes."""
        return self.model_copy(update={"shape": [sizes.get(d, d) if isinstance(d, str) else d for d in self.shape]})


# The graph's signature (DESIGN.md, "The ONNX graph"): H x W is the canvas, K is max_detections.
GRAPH_INPUTS = (
    TensorSpec(name="images", dtype="uint8", shape=["batch", "H", "W", 3]),
    TensorSpec(name="score_threshold", dtype="float32", shape=[]),
    TensorSpec(name="iou_threshold", dtype="float32", shape=[]),
)
GRAPH_OUTPUTS = (
    TensorSpec(name="num_detections", dtype="int64", shape=["batch"]),
    TensorSpec(name="boxes", dtype="float32", shape=["batch", "K", 4]),
    TensorSpec(name="scores", dtype="float32", shape=["batch", "K"]),
    TensorSpec(name="labels", dtype="int64", shape=["batch", "K"]),
)


def graph_signature(canvas: tuple[int, int], max_detections: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs with the canvas and K filled in (the batch stays dynamic)."""
    sizes = {"H": canvas[0], "W": canvas[1], "K": max_detections}
    return [spec.sized(sizes) for spec in GRAPH_INPUTS], [spec.sized(sizes) for spec in GRAPH_OUTPUTS]


class LetterboxSpec(BaseModel):
    """How images are put on the canvas (``service.letterbox``): scaled to fit, at the top left, padded."""

    align: Literal["top-left"] = "top-left"
    pad_value: int = Field(ge=0, le=255)
    resample: Literal["bilinear"] = "bilinear"


class ParityFigures(BaseModel):
    """What the export's parity check measured: the graph in ONNX Runtime against the eager model, image by image."""

    compared: int = Field(ge=0)
    matched: int = Field(ge=0)
    matched_fraction: float
    max_box_delta_px: float
    max_score_delta: float
    min_iou: float
    batch_sizes: list[int]
    images: int
    score_threshold: float


GraphPrecision = Literal["fp32", "int8"]


class AccuracyGate(BaseModel):
    """A reduced-precision graph measured against the package's float graph on a validation set: the export's gate.

    Strict parity cannot hold below fp32, so the gate is accuracy: COCO mAP (``metric``)
    may drop at most ``max_map_drop``, and at least ``min_recall`` of the float
    graph's detections at score >= 0.5 must be found again among the reduced graph's
    at score >= 0.5 (same label, IoU >= 0.5; ``match_score`` and ``match_iou``).

    ``reference`` says what the mAPs are measured against: ``annotations``, a COCO
    validation set's ground truth (``metric`` mAP@[.5:.95]); ``float_detections``, for
    a folder of images without annotations, the float graph's own detections at score
    >= 0.5, so that ``float_map`` is 1.0 there and ``map`` says how far the reduced
    graph's detections are from the float graph's. That one is mAP@.5: the float
    graph's boxes are not the objects' true boxes, and at the strict IoUs of
    mAP@[.5:.95] a sub-pixel shift of a box counts as a miss.
    """

    val_images: int = Field(ge=1)
    reference: Literal["annotations", "float_detections"] = "annotations"
    metric: Literal["mAP@[.5:.95]", "mAP@.5"] = "mAP@[.5:.95]"
    float_map: float
    map: float
    map_drop: float
    recall: float
    float_detections: int | None = Field(default=None, ge=0, description="the float graph's detections at match_score: recall's base")
    max_map_drop: float
    min_recall: float
    match_score: float = 0.5  # the score of the detections that recall counts, on both sides
    match_iou: float = 0.5  # the IoU at which a detection of the same label is found again


class GraphFile(BaseModel):
    """A reduced-precision graph beside the float one: same inputs and outputs, quantized inside."""

    file: str
    precision: GraphPrecision
    sha256: str
    accuracy: AccuracyGate
    # How the graph was made (tool, quantized ops, calibration images): written by the export, checked by no one.
    quantization: dict[str, Any] = Field(default_factory=dict)


class ModelManifest(BaseModel):
    # Keys this class does not name are kept (and written back): a newer export's additions pass through an older reader.
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    version: str
    arch: str
    categories: list[str] = Field(min_length=2)
    canvas: tuple[int, int]
    letterbox: LetterboxSpec | None = None
    max_batch: int = Field(ge=1)
    max_detections: int = Field(ge=1)
    score_threshold: float = Field(ge=0, le=1)
    iou_threshold: float = Field(ge=0, le=1)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    onnx_file: str = ONNX_FILE  # the float (fp32) graph
    onnx_sha256: str
    graphs: list[GraphFile] = Field(default_factory=list, description="reduced-precision graphs beside the float one, each passed its gate")
    probe_images: list[str] = Field(
        default_factory=list,
        description="validation canvases (JPEG, canvas-sized, paths in the package) on which the service checks a reduced "
        "precision on its own machine before it chooses one (DETECTOR_PRECISION=auto)",
    )
    # How the graph was made: written by the export, shown by the service, checked by neither.
    opset: int | None = None
    parity: ParityFigures | None = None
    export_config: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    tools: dict[str, str] = Field(default_factory=dict)
    created: str | None = None

    @model_validator(mode="after")
    def _shapes_agree(self) -> ModelManifest:
        """The graph's declared shapes must say what the canvas and K say: a hand-edited manifest is caught here."""
        images = self.tensor("images", self.inputs).shape
        if list(images[1:]) != [*self.canvas, 3]:
            raise ValueError(f"input 'images' has shape {images}, which does not match canvas {list(self.canvas)}")
        boxes = self.tensor("boxes", self.outputs).shape
        if list(boxes[1:]) != [self.max_detections, 4]:
            raise ValueError(f"output 'boxes' has shape {boxes}, which does not match max_detections {self.max_detections}")
        return self

    @staticmethod
    def tensor(name: str, specs: list[TensorSpec]) -> TensorSpec:
        for spec in specs:
            if spec.name == name:
                return spec
        raise ValueError(f"no tensor named {name!r} (the graph's tensors are {[s.name for s in specs]})")

    @property
    def precisions(self) -> list[GraphPrecision]:
        """The precisions the package holds a graph for: fp32 always, then the reduced ones."""
        return ["fp32", *(graph.precision for graph in self.graphs)]

    def graph_file(self, precision: GraphPrecision) -> tuple[str, str]:
        """The file name and SHA-256 of the package's graph in ``precision``."""
        if precision == "fp32":
            return self.onnx_file, self.onnx_sha256
        for graph in self.graphs:
            if graph.precision == precision:
                return graph.file, graph.sha256
        raise PackageError(f"the package has no {precision} graph; it has {', '.join(self.precisions)}")

    def write(self, package: Path) -> Path:
        path = Path(package) / MANIFEST_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, package: Path) -> ModelManifest:
        path = Path(package) / MANIFEST_FILE
        if not path.is_file():
            raise PackageError(f"{path}: no model manifest (a model package directory holds {ONNX_FILE} and {MANIFEST_FILE})")
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, ValidationError) as error:
            raise PackageError(f"{path}: not a valid model manifest: {error}") from error


class PackageError(RuntimeError):
    """The model package is missing or unusable; the message names the file."""


GraphPort = tuple[str, list[int | None]]  # a graph's input or output as an engine reads it: dtype, shape (None: dynamic)


def check_ports(path: Path, kind: str, declared: list[TensorSpec], found: Mapping[str, GraphPort]) -> None:
    """The graph's inputs or outputs (``found``, by name) must be the manifest's: names, element types and fixed dimensions."""
    for spec in declared:
        if spec.name not in found:
            raise PackageError(f"{path}: the manifest's {kind} {spec.name!r} is not in the graph (it has {sorted(found)})")
        dtype, shape = found[spec.name]
        if dtype != spec.dtype or shape != [d if isinstance(d, int) else None for d in spec.shape]:
            raise PackageError(
                f"{path}: {kind} {spec.name!r} is {dtype} {shape} in the graph but {spec.dtype} {spec.shape} in the manifest"
            )


def read_manifest(package: Path) -> ModelManifest:
    return ModelManifest.read(package)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_graph_file(package: Path, manifest: ModelManifest, precision: GraphPrecision = "fp32") -> Path:
    """The package's ONNX file in ``precision``, if it is the very file the manifest was written for."""
    name, sha256 = manifest.graph_file(precision)
    path = Path(package) / name
    if not path.is_file():
        raise PackageError(f"{path}: the manifest names this graph file, but it is missing")
    if sha256_of(path) != sha256:
        raise PackageError(f"{path}: its SHA-256 differs from the manifest's onnx_sha256 (a damaged copy, or a graph from another export)")
    return path
