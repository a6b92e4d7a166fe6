"""The OpenVINO engine (DETECTOR_ENGINE=openvino) beside ONNX Runtime, and DETECTOR_PRECISION for both: parity with ONNX
Runtime, the exact-batching guarantee at every engine and precision, int8 against fp32, and the start-up refusals."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.servers import ServerProcess
from model_export.synth import generate_image
from service.agreement import box_iou
from service.engines import BatchOutput, Engine, create_engine
from service.main import create_app
from service.manifest import AccuracyGate, GraphFile, PackageError, read_manifest, sha256_of
from service.settings import SettingsError, load_settings
from tests.conftest import sample_canvases

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed here (pip install -e '.[openvino]'; the CI has it)")


def cpu_has_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


SCORE, IOU = 0.1, 0.5
# (engine, precision) pairs; bf16 runs only where the CPU has it (see test_bf16_is_refused_on_a_cpu_without_it).
ENGINES = [
    ("onnxruntime", "f32"),
    ("onnxruntime", "int8"),
    pytest.param("openvino", "f32", marks=needs_openvino),
    pytest.param("openvino", "int8", marks=needs_openvino),
    pytest.param("openvino", "bf16", marks=needs_openvino),
]


def add_int8_graph(package: Path, calibration: Path) -> Path:
    """The package's int8 graph as ``python -m model_export quantize`` makes it (model_export.quantize.quantize_graph),
    calibrated on eight synthetic scenes, listed in the manifest without its accuracy gate (measured by the tests below)."""
    from model_export.calibration import read_image_set
    from model_export.config import QuantizeConfig
    from model_export.quantize import INT8_GRAPH_FILE, quantize_graph

    calibration.mkdir()
    for index in range(8):
        generate_image(seed=7, index=index, empty_fraction=0.0)[0].save(calibration / f"{index}.png")
    manifest = read_manifest(package)
    path = package / INT8_GRAPH_FILE
    made = quantize_graph(package / manifest.onnx_file, path, read_image_set(calibration, 8, 40_000_000), manifest, QuantizeConfig())
    list_int8_graph(package, path, made)
    return path


def list_int8_graph(package: Path, path: Path, quantization: dict[str, Any] | None = None) -> None:
    """Lists ``path`` in the package's manifest as its int8 graph. Not gated: the figures only fill the required fields."""
    gate = AccuracyGate(val_images=1, float_map=0.0, map=0.0, map_drop=0.0, recall=0.0, max_map_drop=1.0, min_recall=0.0)
    graph = GraphFile(file=path.name, precision="int8", sha256=sha256_of(path), accuracy=gate, quantization=quantization or {})
    read_manifest(package).model_copy(update={"graphs": [graph]}).write(package)


@pytest.fixture(scope="module")
def int8_package(small_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small package with an int8 graph beside its float one."""
    package = tmp_path_factory.mktemp("int8") / "package"
    shutil.copytree(small_package, package)
    add_int8_graph(package, package.parent / "calibration")
    return package


@pytest.fixture(scope="module")
def engines(int8_package: Path) -> Iterator[Callable[[str, str], Engine]]:
    """engine(name, precision): built once per module through the factory, with the library's default threads."""
    built: dict[tuple[str, str], Engine] = {}

    def get(name: str, precision: str) -> Engine:
        if (name, precision) not in built:
            settings = load_settings(model_dir=int8_package, engine=name, precision=precision)
            built[name, precision] = create_engine(settings, read_manifest(int8_package))
        return built[name, precision]

    yield get


@pytest.fixture(scope="module")
def images(int8_package: Path) -> np.ndarray:
    """max_batch busy, sparse and blank canvases."""
    manifest = read_manifest(int8_package)
    return sample_canvases(manifest.canvas, manifest.max_batch)


def rows(output: BatchOutput, index: int) -> tuple[np.ndarray, ...]:
    """One image's outputs, padding rows included."""
    return output.num_detections[index], output.boxes[index], output.scores[index], output.labels[index]


def detections(output: BatchOutput) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each image's valid rows: boxes, scores, labels."""
    counts = output.num_detections
    return [(output.boxes[i, : counts[i]], output.scores[i, : counts[i]], output.labels[i, : counts[i]]) for i in range(len(output))]


# The exact-batching guarantee


@pytest.mark.parametrize(("name", "precision"), ENGINES)
def test_an_image_gets_the_same_bits_in_any_batch(
    engines: Callable[[str, str], Engine], images: np.ndarray, name: str, precision: str
) -> None:
    """Each image alone, then in batches of every size up to max_batch, in shuffled order: bitwise the same rows."""
    if precision == "bf16" and not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 (OpenVINO's OPTIMIZATION_CAPABILITIES lack BF16): bf16 is refused here")
    engine = engines(name, precision)
    alone = [engine.run(images[i : i + 1], SCORE, IOU) for i in range(len(images))]
    assert sum(int(out.num_detections[0]) for out in alone) > 0, "the images should give detections"
    rng = np.random.default_rng(0)
    for size in range(1, engine.max_batch + 1):
        order = rng.permutation(len(images))
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            batch = engine.run(images[chunk], SCORE, IOU)
            for position, index in enumerate(chunk):
                for got, expected in zip(rows(batch, position), rows(alone[index], 0), strict=True):
                    assert np.array_equal(got, expected), f"image {index} at position {position} of a batch of {len(chunk)}"


# Parity and precision


@needs_openvino
def test_openvino_f32_finds_what_onnxruntime_finds(engines: Callable[[str, str], Engine], images: np.ndarray) -> None:
    # Measured on an AMD EPYC (AVX2): boxes within 2e-5 px, scores within 1e-6; the bounds leave room for other CPUs' kernels.
    reference = detections(engines("onnxruntime", "f32").run(images, SCORE, IOU))
    found = detections(engines("openvino", "f32").run(images, SCORE, IOU))
    assert sum(len(scores) for _, scores, _ in reference) > 0
    for (ref_boxes, ref_scores, ref_labels), (boxes, scores, labels) in zip(reference, found, strict=True):
        assert len(scores) == len(ref_scores)
        np.testing.assert_array_equal(labels, ref_labels)
        np.testing.assert_allclose(boxes, ref_boxes, rtol=0, atol=1e-3)
        np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)


def recall(reference: BatchOutput, candidate: BatchOutput, min_score: float = 0.5) -> tuple[int, int]:
    """How many of the reference's detections at ``min_score`` or more the candidate finds again (same label, IoU >= 0.5)."""
    found = total = 0
    for (ref_boxes, ref_scores, ref_labels), (boxes, _, labels) in zip(detections(reference), detections(candidate), strict=True):
        keep = ref_scores >= min_score
        total += int(keep.sum())
        if keep.any() and len(boxes):
            matches = (box_iou(ref_boxes[keep], boxes) >= 0.5) & (ref_labels[keep][:, None] == labels[None, :])
            found += int(matches.any(axis=1).sum())
    return found, total


@pytest.mark.parametrize("name", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_int8_finds_most_of_what_fp32_finds(
    engines: Callable[[str, str], Engine], int8_package: Path, name: str, request: pytest.FixtureRequest
) -> None:
    """As the quantizer's gate counts it: fp32's detections at >= 0.5 found among int8's at >= 0.5 (same label, IoU >= 0.5)."""
    if name == "openvino":
        # A known defect, open in issue 16: measured on an AMD EPYC (AVX2, no VNNI), OpenVINO finds 2 of 26; with 7-bit
        # weights 10; with 7-bit weights and without model_export.qdq_graph's rewiring 24, ONNX Runtime's figure. Not
        # measured on a VNNI CPU, where the first cause (saturation) should not arise; hence not strict there.
        from service.cpu import cpu_has_vnni

        reason = "OpenVINO's int8 saturates on the graph's 8-bit weights without VNNI, and miscomputes some FPN convolutions"
        request.applymarker(pytest.mark.xfail(strict=cpu_has_vnni() is False, reason=reason))
    canvases = sample_canvases(read_manifest(int8_package).canvas, 16, seed=11)
    fp32, int8 = engines("onnxruntime", "f32"), engines(name, "int8")
    found = total = 0
    for part in (canvases[:8], canvases[8:]):
        part_found, part_total = recall(fp32.run(part, 0.5, IOU), int8.run(part, 0.5, IOU))
        found, total = found + part_found, total + part_total
    assert total >= 15, "the canvases should give fp32 detections at >= 0.5"
    assert found >= 0.8 * total, f"int8 found {found} of fp32's {total} detections"


@pytest.mark.parametrize("name", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_int8_runs_the_packages_int8_graph(engines: Callable[[str, str], Engine], images: np.ndarray, name: str) -> None:
    int8 = engines(name, "int8")
    info = int8.describe()
    assert (info.engine, info.precision, info.details["graph_file"]) == (name, "int8", "model.int8.onnx")
    float_scores = engines(name, "f32").run(images, SCORE, IOU).scores
    assert not np.array_equal(int8.run(images, SCORE, IOU).scores, float_scores), "int8 should not compute the float graph's numbers"


@needs_openvino
def test_openvino_describes_what_it_compiled(engines: Callable[[str, str], Engine], int8_package: Path) -> None:
    import openvino as ov

    engine = engines("openvino", "f32")
    info = engine.describe()
    assert (info.engine, info.provider, info.device, info.precision) == ("openvino", "CPU", "cpu", "fp32")
    assert info.version == ov.__version__.split("-")[0]
    assert info.details["inference_precision_hint"] == "f32" and info.details["performance_hint"] == "LATENCY"
    assert info.details["graph_file"] == "model.onnx" and info.details["threads"] >= 1
    # The batch dimension compiled as the package's range, not left unbounded.
    batch = engine.compiled.input("images").get_partial_shape()[0]  # type: ignore[attr-defined]
    assert (batch.get_min_length(), batch.get_max_length()) == (1, read_manifest(int8_package).max_batch)


@needs_openvino
@pytest.mark.parametrize(("precision", "hint"), [("f32", "f32"), ("int8", "f32")])
def test_openvino_always_sets_the_inference_precision(
    int8_package: Path, monkeypatch: pytest.MonkeyPatch, precision: str, hint: str
) -> None:
    """OpenVINO's default on a CPU with bf16 is bf16: the engine must never leave the precision to it."""
    import openvino as ov

    configs: list[dict[str, object]] = []
    compile_model = ov.Core.compile_model

    def spy(self: ov.Core, model: object, device: str, config: dict[str, object]) -> object:
        configs.append(dict(config))
        return compile_model(self, model, device, config)

    monkeypatch.setattr(ov.Core, "compile_model", spy)
    settings = load_settings(model_dir=int8_package, engine="openvino", precision=precision, intra_op_threads=1)
    create_engine(settings, read_manifest(int8_package))
    assert [config.get("INFERENCE_PRECISION_HINT") for config in configs] == [hint]
    assert configs[0]["INFERENCE_NUM_THREADS"] == 1


# Refusals


@needs_openvino
def test_bf16_is_refused_on_a_cpu_without_it(small_package: Path) -> None:
    if cpu_has_bf16():
        pytest.skip("this CPU has bf16")
    settings = load_settings(model_dir=small_package, engine="openvino", precision="bf16")
    with pytest.raises(RuntimeError, match=r"DETECTOR_PRECISION=bf16: .* OPTIMIZATION_CAPABILITIES are .*without BF16"):
        create_engine(settings, read_manifest(small_package))


@needs_openvino
def test_bf16_is_taken_on_a_cpu_that_has_it() -> None:
    from service.engines.openvino import check_capabilities

    check_capabilities("bf16", ["FP32", "BF16", "INT8"], "a CPU with AMX")
    check_capabilities("f32", ["FP32"], "any CPU")


def test_vnni_and_bf16_are_read_from_the_cpu_flags(tmp_path: Path) -> None:
    from service.cpu import cpu_has_bf16, cpu_has_vnni

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert cpu_has_vnni(cpuinfo) is False and cpu_has_bf16(cpuinfo) is False
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n")
    assert cpu_has_vnni(cpuinfo) is True and cpu_has_bf16(cpuinfo) is True
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_int8 amx_tile\n")
    assert cpu_has_vnni(cpuinfo) is True and cpu_has_bf16(cpuinfo) is True
    assert cpu_has_vnni(tmp_path / "missing") is None and cpu_has_bf16(tmp_path / "missing") is None


@needs_openvino
def test_a_qoperator_int8_graph_is_refused_naming_the_format(small_package: Path, tmp_path: Path) -> None:
    """ONNX Runtime's other int8 format (QLinearConv with per-channel scales): OpenVINO cannot read it."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    package = tmp_path / "package"
    shutil.copytree(small_package, package)
    manifest = read_manifest(package)
    canvases = iter(sample_canvases(manifest.canvas, 2))

    class Canvases(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(canvases, None)
            thresholds = {"score_threshold": np.array(0.3, np.float32), "iou_threshold": np.array(IOU, np.float32)}
            return None if image is None else {"images": image[None], **thresholds}

    path = package / "model.int8.onnx"
    quantize_static(
        package / "model.onnx", path, Canvases(), quant_format=QuantFormat.QOperator, per_channel=True, op_types_to_quantize=["Conv"]
    )
    list_int8_graph(package, path)
    with pytest.raises(PackageError, match=r"model.int8.onnx: OpenVINO cannot read this graph \(an int8 graph must be Q/DQ"):
        create_engine(load_settings(model_dir=package, engine="openvino", precision="int8"), read_manifest(package))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"engine": "openvino", "precision": "int8"}, r"DETECTOR_PRECISION: .*has no int8 graph; it has fp32 \(got 'int8'\)"),
        ({"engine": "onnxruntime", "precision": "int8"}, r"DETECTOR_PRECISION: .*has no int8 graph; it has fp32"),
        ({"engine": "onnxruntime", "precision": "bf16"}, r"DETECTOR_PRECISION: .*bf16 is run by the openvino engine only"),
        ({"engine": "tensorrt", "precision": "bf16"}, r"DETECTOR_PRECISION: .*bf16 is run by the openvino engine only"),
        ({"precision": "fp16"}, r"DETECTOR_PRECISION: Input should be 'auto', 'f32', 'bf16' or 'int8'"),
    ],
)
def test_a_precision_the_package_or_engine_lacks_is_a_bad_setting(small_package: Path, overrides: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(model_dir=small_package, **overrides)


def test_a_precision_the_package_lacks_stops_the_server(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(DETECTOR_ENGINE="openvino", DETECTOR_PRECISION="int8")
    assert server.process.wait(timeout=60) == 2, server.output()
    output = server.output()
    assert "DETECTOR_PRECISION" in output and "it has fp32" in output, output


WITHOUT_OPENVINO = """
import sys
sys.modules["openvino"] = None  # import openvino fails, as where it is not installed
from service.engines import create_engine
from service.main import create_app
from service.manifest import read_manifest
from service.settings import load_settings

package = sys.argv[1]
create_app(load_settings(model_dir=package))
create_engine(load_settings(model_dir=package, intra_op_threads=1), read_manifest(package))
try:
    create_engine(load_settings(model_dir=package, engine="openvino"), read_manifest(package))
except RuntimeError as error:
    print(error)
"""


def test_the_service_runs_without_openvino_unless_asked(small_package: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPENVINO, str(small_package)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "DETECTOR_ENGINE=openvino needs OpenVINO: pip install -e '.[openvino]'" in done.stdout, done.stdout + done.stderr


# Through the server


@needs_openvino
def test_the_server_answers_with_openvino(
    start_server: Callable[..., ServerProcess], make_client: Callable[..., TestClient], scene_images: list[bytes]
) -> None:
    server = start_server(DETECTOR_ENGINE="openvino")
    http: httpx.Client = server.wait_ready()
    runtime = http.get("/v1/models/default").json()["runtime"]
    assert (runtime["engine"], runtime["precision"], runtime["details"]["threads"]) == ("openvino", "fp32", 1)
    response = http.post("/detect?score_threshold=0.2", content=scene_images[1], headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    found = response.json()["detections"]
    expected = make_client().post("/detect?score_threshold=0.2", content=scene_images[1], headers={"Content-Type": "image/png"}).json()
    assert found and [d["label"] for d in found] == [d["label"] for d in expected["detections"]]
    for got, want in zip(found, expected["detections"], strict=True):
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert all(got["box"][k] == pytest.approx(want["box"][k], abs=1e-2) for k in want["box"])


@pytest.mark.parametrize("engine", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_a_damaged_int8_graph_is_refused_at_load(int8_package: Path, tmp_path: Path, engine: str) -> None:
    """The graph the engine reads is the one whose SHA-256 is checked: the int8 file, when int8 is asked for."""
    package = tmp_path / "package"
    shutil.copytree(int8_package, package)
    graph = package / "model.int8.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with TestClient(create_app(load_settings(model_dir=package, engine=engine, precision="int8")), raise_server_exceptions=False) as client:
        state = client.app.state  # type: ignore[attr-defined]
        deadline = time.monotonic() + 60
        while state.load_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        failure = state.load_error
        assert client.get("/health/ready").status_code == 503
    assert failure is not None and "model.int8.onnx" in failure and "SHA-256" in failure, failure
