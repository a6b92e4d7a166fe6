"""Export: load checkpoint -> wrap for export -> export to ONNX -> verify parity -> write the package.

The package directory is written whole or not at all: everything is staged in
a sibling directory that replaces the target only after the parity check.
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch
from torchvision.models.detection import FasterRCNN

from model_export.checkpoint import LoadedModel
from model_export.command_errors import ExportError
from model_export.config import ExportConfig
from model_export.detections import Detections
from model_export.evaluate import eager_predictor
from model_export.export_graph import BatchedFasterRCNN
from model_export.onnx_ops import translation_table
from model_export.package import OnnxPredictor
from model_export.parity import ParityReport, compare_detections
from model_export.synth import generate_image
from model_export.tensorrt_ops import check_graph
from service.letterbox import PAD_VALUE, letterbox
from service.manifest import GRAPH_INPUTS, GRAPH_OUTPUTS, ONNX_FILE, LetterboxSpec, ModelManifest, ParityFigures, graph_signature, sha256_of


def check_canvas(model: FasterRCNN, canvas: tuple[int, int]) -> None:
    """The canvas must need no padding: torchvision pads each side to a multiple of ``size_divisible``."""
    divisor = int(model.transform.size_divisible)
    if canvas[0] % divisor or canvas[1] % divisor:
        raise ExportError(
            f"canvas {canvas[0]}x{canvas[1]} is not divisible by {divisor}, as this backbone requires; try {_round_up(canvas, divisor)}"
        )


def _round_up(canvas: tuple[int, int], divisor: int) -> str:
    return "x".join(str(-(-side // divisor) * divisor) for side in canvas)


def export_onnx(wrapper: BatchedFasterRCNN, path: Path, config: ExportConfig) -> None:
    canvas = wrapper.constants.canvas
    batch = torch.export.Dim("batch", min=1, max=config.max_batch)
    example = (torch.full((min(2, config.max_batch), *canvas, 3), PAD_VALUE, dtype=torch.uint8), torch.tensor(0.5), torch.tensor(0.5))
    program = torch.onnx.export(
        wrapper,
        example,
        dynamo=True,
        input_names=[spec.name for spec in GRAPH_INPUTS],
        output_names=[spec.name for spec in GRAPH_OUTPUTS],
        dynamic_shapes=({0: batch}, None, None),
        custom_translation_table=translation_table(),
        opset_version=config.opset,
        optimize=True,
        verbose=False,
    )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)
    issues = check_graph(onnx.load(str(path)))
    if issues:
        raise ExportError(
            f"{path}: the graph has {len(issues)} operator(s) TensorRT cannot import natively:\n  " + "\n  ".join(map(str, issues))
        )


def parity_canvases(canvas: tuple[int, int], count: int) -> np.ndarray:
    """Sample canvases: synthetic scenes (busy, sparse and empty) letterboxed as the service does it."""
    canvases = []
    for index in range(count):
        image, _ = generate_image(seed=20240601, index=index, empty_fraction=0.0)
        if index % 4 == 3:
            image = image.point(lambda _: PAD_VALUE)  # a blank image: usually no detections
        canvases.append(letterbox(image, canvas)[0])
    return np.stack(canvases)


@contextlib.contextmanager
def eager_thresholds(model: FasterRCNN, score_threshold: float, iou_threshold: float, max_detections: int) -> Iterator[None]:
    """Sets the eager model's final thresholds to the graph's run-time ones, and restores them."""
    heads = model.roi_heads
    saved = heads.score_thresh, heads.nms_thresh, heads.detections_per_img
    heads.score_thresh, heads.nms_thresh, heads.detections_per_img = score_threshold, iou_threshold, max_detections
    try:
        yield
    finally:
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img = saved


def verify_parity(loaded: LoadedModel, onnx_path: Path, config: ExportConfig, iou_threshold: float) -> ParityReport:
    """Runs the graph in ONNX Runtime at several batch sizes against the eager model, image by image."""
    canvases = parity_canvases(loaded.canvas, config.parity_images)
    with eager_thresholds(loaded.model, config.parity_score_threshold, iou_threshold, config.max_detections):
        eager = eager_predictor(loaded.model)
        reference = [eager(canvases[i : i + 1])[0] for i in range(len(canvases))]
    runner = OnnxPredictor(onnx_path.parent)
    report = ParityReport()
    for batch in sorted({min(b, config.max_batch) for b in config.parity_batches}):
        exported: list[Detections] = []
        for start in range(0, len(canvases), batch):
            exported += runner.run(canvases[start : start + batch], config.parity_score_threshold, iou_threshold)
        for ref, got in zip(reference, exported, strict=False):
            report.add(compare_detections(ref, got, config.parity_score_threshold, config.max_detections))
    return report


def check_parity(report: ParityReport, config: ExportConfig) -> None:
    """Refuses a graph that differs from the eager model, and a check that compared nothing (it proves nothing)."""
    if report.compared == 0:
        raise ExportError(
            f"parity check compared no detections: on its {config.parity_images} sample images neither model detected anything "
            f"above score {config.parity_score_threshold:g}; lower parity_score_threshold or export a trained model"
        )
    if report.matched_fraction < config.parity_min_matched:
        raise ExportError(
            f"parity check failed: {report.matched} of {report.compared} detections matched between ONNX Runtime and "
            f"the eager model ({report.matched_fraction:.2%} < {config.parity_min_matched:.0%}); details: {report.to_json()}"
        )


def export_package(loaded: LoadedModel, out: Path, config: ExportConfig) -> ModelManifest:
    """Exports, verifies and writes the package directory ``out``; returns the manifest."""
    check_canvas(loaded.model, loaded.canvas)
    iou_threshold = config.iou_threshold if config.iou_threshold is not None else float(loaded.model.roi_heads.nms_thresh)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a package is read by other users (the service container)
    try:
        wrapper = BatchedFasterRCNN(loaded.model, loaded.canvas, config.max_detections).eval()
        onnx_path = staging / ONNX_FILE
        export_onnx(wrapper, onnx_path, config)
        manifest = _manifest(loaded, config, onnx_path, iou_threshold)
        manifest.write(staging)  # the parity check runs the staged package, manifest included, as the service will
        report = verify_parity(loaded, onnx_path, config, iou_threshold)
        check_parity(report, config)
        manifest = manifest.model_copy(update={"parity": _parity_figures(report, config)})
        manifest.write(staging)
        _replace_directory(staging, out)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_directory(staging: Path, out: Path) -> None:
    if out.exists():
        retired = out.with_name(f".{out.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(out)


def _manifest(loaded: LoadedModel, config: ExportConfig, onnx_path: Path, iou_threshold: float) -> ModelManifest:
    """The package's manifest, before its parity check has run (``parity`` None)."""
    import onnxruntime
    import torchvision

    inputs, outputs = graph_signature(loaded.canvas, config.max_detections)
    return ModelManifest(
        name=config.name,
        version=config.version,
        arch=loaded.arch,
        categories=loaded.categories,
        canvas=loaded.canvas,
        letterbox=LetterboxSpec(align="top-left", pad_value=PAD_VALUE, resample="bilinear"),
        max_batch=config.max_batch,
        max_detections=config.max_detections,
        score_threshold=config.score_threshold,
        iou_threshold=iou_threshold,
        inputs=inputs,
        outputs=outputs,
        onnx_file=onnx_path.name,
        onnx_sha256=sha256_of(onnx_path),
        opset=config.opset,
        export_config=asdict(config),
        training=loaded.metadata,
        tools={
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


def _parity_figures(report: ParityReport, config: ExportConfig) -> ParityFigures:
    """The parity check's figures and how it was run, as the manifest records them."""
    run = {"batch_sizes": list(config.parity_batches), "images": config.parity_images, "score_threshold": config.parity_score_threshold}
    return ParityFigures.model_validate(report.to_json() | run)
