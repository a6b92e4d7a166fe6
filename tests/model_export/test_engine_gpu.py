"""TensorRT engines (TensorRT 11, strongly typed) built from the default package, and ONNX Runtime's CUDA and TensorRT
providers, each against the float32 graph in ONNX Runtime on the CPU (GPU hosts only; ``make gpu-check`` runs them).

fp32 engines must match the float graph detection by detection. Below fp32 strict parity cannot hold, so the fp16 and
int8 engines, and the TensorRT provider at fp16 and int8, must pass the export's accuracy gate instead
(``model_export.accuracy_gate``, ``QuantizeConfig``'s figures) on synthetic scenes read as a plain folder of images.
"""

from __future__ import annotations

import ctypes
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from model_export.accuracy_gate import gate_against_float_detections, gate_misses
from model_export.calibration import read_image_set
from model_export.config import QuantizeConfig, SynthConfig
from model_export.detections import Detections
from model_export.engine import EngineConfig, build_engine
from model_export.package import OnnxPredictor
from model_export.parity import ParityReport, compare_detections
from model_export.synth import generate_image, write_dataset
from service.engines.base import Engine
from service.engines.engine_manifest import EngineManifest, Precision
from service.engines.tensorrt import TensorRTEngine
from service.letterbox import letterbox
from service.manifest import AccuracyGate, ModelManifest, read_manifest, sha256_of

DEFAULT_PACKAGE = Path(__file__).resolve().parents[2] / "models" / "default" / "package"
SCORE_THRESHOLD = 0.3
IMAGES = 16
GATE = QuantizeConfig()  # the export's gate: mAP drop <= 0.01, recall >= 0.95 at score >= 0.5, IoU >= 0.5
VAL_IMAGES = 96  # the seed-12 scenes the int8 graph's gate was tried on (model_export.accuracy_gate); whole batches of 8
TENSORRT_PROVIDER = "TensorrtExecutionProvider"


@pytest.fixture(scope="module")
def canvases() -> np.ndarray:
    canvas = read_manifest(DEFAULT_PACKAGE).canvas
    return np.stack([letterbox(generate_image(seed=9, index=i, empty_fraction=0.0)[0], canvas)[0] for i in range(IMAGES)])


@pytest.fixture(scope="module")
def expected(canvases: np.ndarray) -> list[Detections]:
    """The float32 graph on the CPU, each image's detections."""
    return OnnxPredictor(DEFAULT_PACKAGE).run(canvases, SCORE_THRESHOLD, read_manifest(DEFAULT_PACKAGE).iou_threshold)


@dataclass
class BuiltEngines:
    """One copy of the default package per module, each precision's engine built into it once (sharing its timing cache)."""

    package: Path
    built: dict[Precision, EngineManifest] = field(default_factory=dict)

    def open(self, precision: Precision) -> tuple[TensorRTEngine, EngineManifest]:
        if precision not in self.built:
            # min 2: a batch of 1 runs padded to 2, which must not change its detections.
            path = build_engine(self.package, EngineConfig(2, 4, 16, fp16=precision == "fp16", int8=precision == "int8"))
            self.built[precision] = EngineManifest.read(path.with_suffix(".json"))
        return TensorRTEngine(self.package, read_manifest(self.package), precision=precision), self.built[precision]


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> BuiltEngines:
    package = tmp_path_factory.mktemp("engines") / "package"
    shutil.copytree(DEFAULT_PACKAGE, package)
    return BuiltEngines(package)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_onnxruntime_at_every_batch_size(
    engines: BuiltEngines, canvases: np.ndarray, expected: list[Detections], precision: Precision
) -> None:
    engine, info = engines.open(precision)
    fp16 = precision == "fp16"
    assert info.precision == precision and info.graph_file == ("model.fp16.onnx" if fp16 else "model.onnx")
    manifest = engine.manifest
    try:
        assert (engine.profile.min, engine.profile.max) == (2, 16)
        for batch in (1, 2, 5, 16):
            report = ParityReport()
            for start in range(0, IMAGES, batch):
                found = engine.run(canvases[start : start + batch], SCORE_THRESHOLD, manifest.iou_threshold).per_image()
                assert len(found) == len(canvases[start : start + batch])
                for i, got in enumerate(found):
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
    report = ParityReport()
    for want, got in zip(expected[:8], engine.run(canvases[:8], SCORE_THRESHOLD, manifest.iou_threshold).per_image(), strict=True):
        report.add(compare_detections(want, got, SCORE_THRESHOLD, manifest.max_detections))
    assert report.compared > 0, "nothing was compared: the images gave no detections"
    assert report.matched_fraction >= 0.99, report.to_json()


# fp16 and int8: the export's accuracy gate against the float graph on the CPU


@pytest.fixture(scope="module")
def val_canvases(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Synthetic scenes written as a plain folder of images, read and letterboxed as the gate reads a validation folder."""
    root = tmp_path_factory.mktemp("val")
    write_dataset(root, SynthConfig(count=VAL_IMAGES, seed=12))
    images = read_image_set(root / "images", VAL_IMAGES, GATE.max_image_pixels, what="validation")
    return np.concatenate(list(images.batches(read_manifest(DEFAULT_PACKAGE).canvas, GATE.batch_size)))


@pytest.fixture(scope="module")
def float_detections(val_canvases: np.ndarray) -> list[Detections]:
    """The float graph in ONNX Runtime's CPU provider, as measure_accuracy runs it."""
    return OnnxPredictor(DEFAULT_PACKAGE, GATE.map_score_threshold)(val_canvases)


def detect(engine: Engine, canvases: np.ndarray, manifest: ModelManifest) -> list[Detections]:
    """The engine's detections at the gate's score threshold and the package's IoU threshold, a batch of the gate's size at a time."""
    found: list[Detections] = []
    for start in range(0, len(canvases), GATE.batch_size):
        found += engine.run(canvases[start : start + GATE.batch_size], GATE.map_score_threshold, manifest.iou_threshold).per_image()
    return found


def export_gate(float_found: list[Detections], found: list[Detections], manifest: ModelManifest) -> AccuracyGate:
    """The gate's figures as the export computes them on a plain folder: mAP@.5 of each against the float graph's
    detections at match_score, and the share of those that ``found`` finds again."""
    return gate_against_float_detections(float_found, found, manifest, GATE, "the gate's synthetic scenes")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_engine_passes_the_export_accuracy_gate(
    engines: BuiltEngines, val_canvases: np.ndarray, float_detections: list[Detections], precision: Precision
) -> None:
    engine, info = engines.open(precision)
    manifest = engine.manifest
    try:
        fp16_graph = engines.package / "model.fp16.onnx"
        graph = manifest.graph_file("int8") if precision == "int8" else (fp16_graph.name, sha256_of(fp16_graph))
        assert (info.precision, info.graph_file, info.graph_sha256, info.onnx_sha256) == (precision, *graph, manifest.onnx_sha256)
        assert engine.describe().precision == precision
        gate = export_gate(float_detections, detect(engine, val_canvases, manifest), manifest)
    finally:
        engine.close()
    assert not gate_misses(gate), gate_misses(gate)


def _tensorrt_provider_problem() -> str | None:
    import onnxruntime as ort

    if TENSORRT_PROVIDER not in ort.get_available_providers():
        return "this onnxruntime has no TensorRT provider (pip install -e '.[serve-gpu]')"
    try:
        ctypes.CDLL("libnvinfer.so.10")
    except OSError:
        return "onnxruntime-gpu's TensorRT provider links TensorRT 10 (libnvinfer.so.10), not on the loader's path here"
    return None


@pytest.mark.gpu
@pytest.mark.parametrize("int8", [True, False], ids=["int8-graph", "float-graph-trt-fp16"])
def test_onnxruntime_tensorrt_provider_passes_the_export_accuracy_gate(
    tmp_path: Path, val_canvases: np.ndarray, float_detections: list[Detections], int8: bool
) -> None:
    from service.engines.onnxruntime import OnnxRuntimeEngine

    problem = _tensorrt_provider_problem()
    if problem is not None:
        pytest.skip(problem)
    manifest = read_manifest(DEFAULT_PACKAGE)
    engine = OnnxRuntimeEngine(
        DEFAULT_PACKAGE,
        manifest,
        providers=["tensorrt", "cuda", "cpu"],
        trt_fp16=not int8,
        trt_cache_dir=tmp_path / "trt-cache",
        precision="int8" if int8 else "f32",
    )
    assert engine.providers[0] == TENSORRT_PROVIDER
    assert engine.describe().precision == ("int8" if int8 else "fp16")
    assert engine.graph_file == (manifest.graph_file("int8")[0] if int8 else manifest.onnx_file)
    gate = export_gate(float_detections, detect(engine, val_canvases, manifest), manifest)
    assert not gate_misses(gate), gate_misses(gate)
