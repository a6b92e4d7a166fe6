"""TensorRT engines (TensorRT 11, strongly typed) built from the default package and run against ONNX Runtime on the CPU,
and ONNX Runtime's CUDA provider against its CPU one (GPU hosts only; ``make gpu-check`` runs them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from model_export.detections import Detections
from model_export.engine import EngineConfig, build_engine
from model_export.package import OnnxPredictor
from model_export.parity import ParityReport, compare_detections
from model_export.synth import generate_image
from service.engines.engine_manifest import EngineManifest
from service.engines.tensorrt import TensorRTEngine
from service.letterbox import letterbox
from service.manifest import read_manifest

DEFAULT_PACKAGE = Path(__file__).resolve().parents[2] / "models" / "default" / "package"
SCORE_THRESHOLD = 0.3
IMAGES = 16


@pytest.fixture(scope="module")
def canvases() -> np.ndarray:
    canvas = read_manifest(DEFAULT_PACKAGE).canvas
    return np.stack([letterbox(generate_image(seed=9, index=i, empty_fraction=0.0)[0], canvas)[0] for i in range(IMAGES)])


@pytest.fixture(scope="module")
def expected(canvases: np.ndarray) -> list[Detections]:
    """The float32 graph on the CPU, each image's detections."""
    return OnnxPredictor(DEFAULT_PACKAGE).run(canvases, SCORE_THRESHOLD, read_manifest(DEFAULT_PACKAGE).iou_threshold)


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_engine_matches_onnxruntime_at_every_batch_size(
    tmp_path: Path, canvases: np.ndarray, expected: list[Detections], fp16: bool
) -> None:
    package = tmp_path / "package"
    shutil.copytree(DEFAULT_PACKAGE, package)
    # min 2: a batch of 1 runs padded to 2, which must not change its detections.
    engine_path = build_engine(package, EngineConfig(2, 4, 16, fp16=fp16))
    info = EngineManifest.read(engine_path.with_suffix(".json"))
    assert info.precision == ("fp16" if fp16 else "fp32") and info.graph_file == ("model.fp16.onnx" if fp16 else "model.onnx")
    manifest = read_manifest(package)
    engine = TensorRTEngine(package, manifest, precision=info.precision)
    try:
        assert (engine.profile.min, engine.profile.max) == (2, 16)
        for batch in (1, 2, 5, 16):
            report = ParityReport()
            for start in range(0, IMAGES, batch):
                output = engine.run(canvases[start : start + batch], SCORE_THRESHOLD, manifest.iou_threshold)
                assert len(output) == len(canvases[start : start + batch])
                for i in range(len(output)):
                    n = int(output.num_detections[i])
                    got = Detections(output.boxes[i, :n], output.scores[i, :n], output.labels[i, :n])
                    tolerance = 2e-2 if fp16 else 1e-3
                    report.add(
                        compare_detections(expected[start + i], got, SCORE_THRESHOLD, manifest.max_detections, score_tolerance=tolerance)
                    )
            assert report.compared > 0, "nothing was compared: the images gave no detections"
            assert report.matched_fraction >= (0.95 if fp16 else 0.99), (batch, report.to_json())
            assert report.max_box_delta <= (2.0 if fp16 else 0.1), (batch, report.to_json())
        with pytest.raises(ValueError, match=r"outside the engine's profile 2\.\.16"):
            engine.run(np.concatenate([canvases, canvases[:1]]), SCORE_THRESHOLD, manifest.iou_threshold)
    finally:
        engine.close()


@pytest.mark.gpu
def test_onnxruntime_cuda_provider_matches_cpu(canvases: np.ndarray, expected: list[Detections]) -> None:
    import onnxruntime as ort

    from service.engines.onnxruntime import OnnxRuntimeEngine

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (pip install -e '.[serve-gpu]')")
    manifest = read_manifest(DEFAULT_PACKAGE)
    engine = OnnxRuntimeEngine(DEFAULT_PACKAGE, manifest, providers=["cuda", "cpu"])
    assert engine.providers[0] == "CUDAExecutionProvider"
    output = engine.run(canvases[:8], SCORE_THRESHOLD, manifest.iou_threshold)
    report = ParityReport()
    for i in range(len(output)):
        n = int(output.num_detections[i])
        got = Detections(output.boxes[i, :n], output.scores[i, :n], output.labels[i, :n])
        report.add(compare_detections(expected[i], got, SCORE_THRESHOLD, manifest.max_detections))
    assert report.compared > 0, "nothing was compared: the images gave no detections"
    assert report.matched_fraction >= 0.99, report.to_json()
