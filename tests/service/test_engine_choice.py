"""DETECTOR_ENGINE=auto and DETECTOR_PRECISION=auto: which configurations are tried on which machine, and the probe that
decides among them on the default package, with real engines. Faults (an engine that loses detections, a slow one, one
that fails to build) are injected by wrapping the real engine."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service.engines import BatchOutput, Engine, EngineInfo, create_engine
from service.engines import choice as choice_module
from service.engines.choice import Configuration, Machine, candidates, choose_engine, forced, read_probe
from service.manifest import PackageError, read_manifest
from service.settings import Settings, load_settings
from tests.conftest import DEFAULT_MODEL_DIR

PACKAGE = DEFAULT_MODEL_DIR / "package"
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
AVX2 = Machine(gpu=False, vnni=False, bf16=False, openvino=HAS_OPENVINO)
NO_OPENVINO_VNNI = Machine(gpu=False, vnni=True, bf16=False, openvino=False)
EVERYTHING = Machine(gpu=False, vnni=True, bf16=True, openvino=True)


def settings(package: Path = PACKAGE, **values: str) -> Settings:
    return load_settings(model_dir=package, intra_op_threads=1, **values)


class Wrapped:
    """A real engine with a fault put into its answers: ``change`` edits each batch's outputs."""

    def __init__(self, engine: Engine, change: Callable[[BatchOutput], BatchOutput]) -> None:
        self.engine, self.change, self.max_batch = engine, change, engine.max_batch

    def run(self, images: np.ndarray, score_threshold: float, iou_threshold: float) -> BatchOutput:
        return self.change(self.engine.run(images, score_threshold, iou_threshold))

    def describe(self) -> EngineInfo:
        return self.engine.describe()


def recording(faults: dict[Configuration, Callable[[Engine], Engine]] | None = None) -> tuple[list[Configuration], choice_module.Build]:
    """A build function that records what it built, and puts in the fault given for a configuration."""
    built: list[Configuration] = []

    def build(values: Settings, manifest: object) -> Engine:
        configuration = Configuration(values.engine, values.precision)  # type: ignore[arg-type]
        built.append(configuration)
        engine = create_engine(values, read_manifest(values.model_dir))
        return (faults or {}).get(configuration, lambda e: e)(engine)

    return built, build


def half_the_detections(engine: Engine) -> Engine:
    return Wrapped(engine, lambda out: BatchOutput(out.num_detections // 2, out.boxes, out.scores, out.labels))


def slow(engine: Engine) -> Engine:
    def wait(out: BatchOutput) -> BatchOutput:
        time.sleep(0.5)
        return out

    return Wrapped(engine, wait)


def broken(engine: Engine) -> Engine:
    raise RuntimeError("injected fault: this runtime cannot compile the graph")


OV_INT8, OV_BF16, OV_F32 = Configuration("openvino", "int8"), Configuration("openvino", "bf16"), Configuration("openvino", "f32")
ORT_INT8, ORT_F32 = Configuration("onnxruntime", "int8"), Configuration("onnxruntime", "f32")


@pytest.mark.parametrize(
    ("engine", "machine", "expected"),
    [
        ("auto", EVERYTHING, [OV_INT8, OV_BF16, ORT_INT8, ORT_F32]),
        ("auto", Machine(gpu=False, vnni=False, bf16=False, openvino=True), [OV_INT8, ORT_F32]),
        ("auto", NO_OPENVINO_VNNI, [ORT_INT8, ORT_F32]),
        ("auto", Machine(gpu=True, vnni=True, bf16=True, openvino=True), [ORT_F32]),
        ("openvino", EVERYTHING, [OV_INT8, OV_BF16, OV_F32]),
        ("onnxruntime", EVERYTHING, [ORT_INT8, ORT_F32]),
        ("onnxruntime", Machine(gpu=False, vnni=False, bf16=False, openvino=True), [ORT_F32]),
    ],
)
def test_candidates_come_fastest_first_and_end_with_the_float_graph(engine: str, machine: Machine, expected: list[Configuration]) -> None:
    assert candidates(settings(engine=engine), read_manifest(PACKAGE), machine) == expected


def test_a_package_without_an_int8_graph_offers_no_int8(small_package: Path) -> None:
    assert candidates(settings(small_package), read_manifest(small_package), EVERYTHING) == [OV_BF16, ORT_F32]


@pytest.mark.parametrize(
    ("engine", "precision", "machine", "expected"),
    [
        ("auto", "int8", AVX2, ORT_INT8),
        ("auto", "int8", EVERYTHING, OV_INT8),
        ("auto", "bf16", AVX2, OV_BF16),
        ("auto", "f32", EVERYTHING, ORT_F32),
        ("openvino", "f32", EVERYTHING, OV_F32),
        ("tensorrt", "auto", EVERYTHING, Configuration("tensorrt", "auto")),
        ("auto", "auto", EVERYTHING, None),
        ("openvino", "auto", EVERYTHING, None),
    ],
)
def test_a_precision_named_in_the_settings_is_forced(engine: str, precision: str, machine: Machine, expected: Configuration | None) -> None:
    assert forced(settings(engine=engine, precision=precision), machine) == expected


def test_forced_settings_build_one_engine_and_say_so() -> None:
    built, build = recording()
    engine, choice = choose_engine(settings(precision="int8"), read_manifest(PACKAGE), build, AVX2)
    assert built == [ORT_INT8]
    assert (choice.by, choice.engine, choice.precision, choice.trials) == ("settings", "onnxruntime", "int8", [])
    assert "DETECTOR_PRECISION=int8" in choice.reason
    assert engine.describe().precision == "int8"


def test_with_nothing_reduced_to_try_the_float_graph_is_built_alone(small_package: Path) -> None:
    built, build = recording()
    engine, choice = choose_engine(settings(small_package), read_manifest(small_package), build, AVX2)
    assert built == [ORT_F32]
    assert (choice.by, choice.engine, choice.precision, choice.trials) == ("auto", "onnxruntime", "f32", [])
    assert "the package has fp32 graphs" in choice.reason
    assert engine.describe().precision == "fp32"


def test_without_probe_images_no_reduced_precision_is_tried(tmp_path: Path) -> None:
    package = shutil.copytree(PACKAGE, tmp_path / "package")
    manifest = json.loads((package / "model.json").read_text())
    manifest["probe_images"] = []
    (package / "model.json").write_text(json.dumps(manifest))
    built, build = recording()
    _, choice = choose_engine(settings(package), read_manifest(package), build, NO_OPENVINO_VNNI)
    assert built == [ORT_F32]
    assert "no probe images to check onnxruntime int8" in choice.reason


def test_a_reduced_precision_that_keeps_the_detections_and_is_faster_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real int8 graph in ONNX Runtime on the default package's probe; speed aside (ONNX Runtime int8 is no faster on
    a CPU without VNNI), so that the accuracy check alone decides."""
    monkeypatch.setattr(choice_module, "SPEED_MARGIN", float("inf"))
    built, build = recording()
    engine, choice = choose_engine(settings(), read_manifest(PACKAGE), build, NO_OPENVINO_VNNI)
    assert built == [ORT_F32, ORT_INT8]
    assert (choice.by, choice.engine, choice.precision) == ("auto", "onnxruntime", "int8")
    [trial] = choice.trials
    assert trial.outcome == "chosen" and trial.recall is not None and trial.recall >= 0.95
    assert trial.ms_per_image is not None and trial.float_ms_per_image is not None
    assert engine.describe().precision == "int8"


def test_a_candidate_that_loses_detections_is_refused_and_the_float_graph_served(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(choice_module, "SPEED_MARGIN", float("inf"))
    built, build = recording({ORT_INT8: half_the_detections})
    engine, choice = choose_engine(settings(), read_manifest(PACKAGE), build, NO_OPENVINO_VNNI)
    assert built == [ORT_F32, ORT_INT8]  # the float engine that served as the reference is the one served
    [trial] = choice.trials
    assert trial.outcome == "less accurate" and trial.recall is not None and trial.recall < 0.95
    assert (choice.engine, choice.precision) == ("onnxruntime", "f32")
    assert "less accurate" in choice.reason and engine.describe().precision == "fp32"


def test_a_candidate_that_is_not_faster_is_refused() -> None:
    built, build = recording({ORT_INT8: slow})
    _, choice = choose_engine(settings(), read_manifest(PACKAGE), build, NO_OPENVINO_VNNI)
    assert built == [ORT_F32, ORT_INT8]
    [trial] = choice.trials
    assert trial.outcome == "not faster", trial
    assert trial.ms_per_image is not None and trial.float_ms_per_image is not None
    assert trial.ms_per_image > trial.float_ms_per_image
    assert (choice.engine, choice.precision) == ("onnxruntime", "f32")


def test_a_candidate_that_fails_to_build_is_skipped_with_its_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(choice_module, "SPEED_MARGIN", float("inf"))
    machine = Machine(gpu=False, vnni=True, bf16=False, openvino=HAS_OPENVINO)
    built, build = recording({OV_INT8: broken})
    _, choice = choose_engine(settings(), read_manifest(PACKAGE), build, machine)
    assert built == ([ORT_F32, OV_INT8, ORT_INT8] if HAS_OPENVINO else [ORT_F32, ORT_INT8])
    failed = [trial for trial in choice.trials if trial.outcome == "failed"]
    if HAS_OPENVINO:
        assert [(t.engine, t.precision) for t in failed] == [("openvino", "int8")]
        assert "injected fault" in failed[0].detail
    assert (choice.engine, choice.precision) == ("onnxruntime", "int8")


def test_probe_images_must_be_readable_and_canvas_sized(tmp_path: Path) -> None:
    package = shutil.copytree(PACKAGE, tmp_path / "package")
    manifest = read_manifest(package)
    probe = read_probe(package, manifest)
    assert probe is not None and probe.shape == (len(manifest.probe_images), *manifest.canvas, 3) and probe.dtype == np.uint8
    first = package / manifest.probe_images[0]
    from PIL import Image

    Image.new("RGB", (17, 9)).save(first)
    with pytest.raises(PackageError, match="canvas-sized"):
        read_probe(package, manifest)
    first.write_bytes(b"not a jpeg")
    with pytest.raises(PackageError, match=first.name):
        read_probe(package, manifest)
