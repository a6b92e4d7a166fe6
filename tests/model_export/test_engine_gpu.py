"""TensorRT engines: built from the default package, run against ONNX Runtime (GPU hosts only)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from model_export.engine import EngineConfig, build_engine
from model_export.package import OnnxPredictor
from model_export.parity import ParityReport, compare_detections
from model_export.synth import generate_image
from service.engines.tensorrt import TensorRTEngine
from service.letterbox import letterbox
from service.manifest import read_manifest

DEFAULT_PACKAGE = Path(__file__).resolve().parents[2] / "models" / "default" / "package"


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True])
def test_engine_matches_onnxruntime_at_every_batch_size(tmp_path: Path, fp16: bool) -> None:
    package = tmp_path / "package"
    shutil.copytree(DEFAULT_PACKAGE, package)
    engine_path = build_engine(package, EngineConfig(1, 4, 16, fp16=fp16))
    assert engine_path.is_file() and engine_path.with_suffix(".json").is_file()
    manifest = read_manifest(package)
    engine = TensorRTEngine(package, manifest)
    reference = OnnxPredictor(package)
    canvases = np.stack([letterbox(generate_image(seed=9, index=i)[0], manifest.canvas)[0] for i in range(16)])
    expected = reference.run(canvases, 0.3, manifest.iou_threshold)
    for batch in (1, 2, 5, 16):
        report = ParityReport()
        for start in range(0, 16, batch):
            output = engine.run(canvases[start : start + batch], 0.3, manifest.iou_threshold)
            for i in range(len(output)):
                n = int(output.num_detections[i])
                got = type(expected[0])(output.boxes[i, :n], output.scores[i, :n], output.labels[i, :n])
                report.add(
                    compare_detections(expected[start + i], got, 0.3, manifest.max_detections, score_tolerance=1e-2 if fp16 else 1e-3)
                )
        assert report.matched_fraction >= (0.95 if fp16 else 0.99), report.to_json()
