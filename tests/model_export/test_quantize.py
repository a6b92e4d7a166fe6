"""The int8 graph (issue 16): a Q/DQ graph with the float regions kept float, its accuracy gate, its manifest entry,
and the calibration images' errors.

On copies of the default package: a trained model, whose int8 graph is close to its float graph (a random model's
scores sit near every threshold, and int8 noise moves a fifth of its detections across 0.5). Calibrated on 8 to 16
synthetic scenes; the Makefile's default-model target uses 200.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from PIL import Image

from model_export.__main__ import main
from model_export.calibration import read_image_set
from model_export.command_errors import AccuracyGateError, CalibrationError
from model_export.config import QuantizeConfig
from model_export.quantize import INT8_GRAPH_FILE, add_int8_graph
from model_export.synth import SynthConfig, write_dataset
from service.engines.choice import read_probe
from service.manifest import MANIFEST_FILE, ModelManifest, read_manifest, sha256_of, verify_graph_file
from tests.model_export.test_cli_imports import REPORT, _heavy_modules_after

FLOAT_REGION_OPS = ("TopK", "NonMaxSuppression", "RoiAlign")
DEFAULT_PACKAGE = Path(__file__).resolve().parents[2] / "models" / "default" / "package"
VAL_SEED = 13  # seeds 1, 2 and 3 made the default model's training, validation and test sets


@pytest.fixture(scope="module")
def val_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 new scenes: enough for the gate's figures to sit well inside its defaults (on 8, mAP moves by 0.01 by chance)."""
    root = tmp_path_factory.mktemp("val")
    write_dataset(root, SynthConfig(count=32, seed=VAL_SEED))
    return root


def _copy(package: Path, where: Path) -> Path:
    shutil.copytree(package, where)
    return where


@pytest.fixture(scope="module")
def int8_package(small_dataset: Path, val_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default package with an int8 graph added by ``python -m model_export quantize`` and its defaults: calibrated
    on 16 scenes, measured on 32 others."""
    package = _copy(DEFAULT_PACKAGE, tmp_path_factory.mktemp("int8") / "package")
    assert main(["quantize", "--package", str(package), "--calibration", str(small_dataset), "--val", str(val_set)]) == 0
    return package


def _graph(package: Path) -> onnx.GraphProto:
    return onnx.load(str(package / INT8_GRAPH_FILE)).graph


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.node for output in node.output}


def _reads_int8(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], position: int) -> bool:
    source = producers.get(node.input[position])
    return source is not None and source.op_type == "DequantizeLinear"


def test_int8_graph_is_a_qdq_graph_with_its_convs_and_gemms_dequantized(int8_package: Path) -> None:
    graph = _graph(int8_package)
    ops = [node.op_type for node in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert not [op for op in ops if op.startswith("QLinear") or op.endswith("Integer")], "QOperator ops: OpenVINO refuses them"
    producers = _producers(graph)
    layers = [node for node in graph.node if node.op_type in ("Conv", "Gemm")]
    int8 = [node.name for node in layers if _reads_int8(node, producers, 0) and _reads_int8(node, producers, 1)]
    assert len(int8) == len(layers) - 1, "every Conv and Gemm but the first conv reads int8 activations and weights"


def test_quantization_is_symmetric_int8_as_tensorrt_takes_it(int8_package: Path) -> None:
    graph = _graph(int8_package)
    initializers = {init.name: init for init in graph.initializer}
    qdq = [node for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = [initializers[node.input[2]] for node in qdq]
    assert {zero_point.data_type for zero_point in zero_points} == {TensorProto.INT8}
    assert not any(numpy_helper.to_array(zero_point).any() for zero_point in zero_points)
    dequantized = {initializers[node.input[0]].data_type for node in qdq if node.input[0] in initializers}
    assert dequantized == {TensorProto.INT8}, "int8 weights, and no int32 bias (TensorRT's parser refuses its DequantizeLinear)"


def test_first_conv_stays_float(int8_package: Path) -> None:
    graph = _graph(int8_package)
    first = next(node for node in graph.node if node.op_type == "Conv")
    float_first = next(node for node in onnx.load(str(int8_package / "model.onnx")).graph.node if node.op_type == "Conv")
    assert first.name == float_first.name and list(first.input) == list(float_first.input), "it reads the image and its float weights"
    assert not any(_reads_int8(first, _producers(graph), position) for position in range(len(first.input)))


def _signature(node: onnx.NodeProto) -> tuple[str, list[str], list[str], list[bytes]]:
    return node.name, list(node.input), list(node.output), [attribute.SerializeToString() for attribute in node.attribute]


def test_decoding_topk_roialign_and_nms_are_untouched_and_read_float_tensors(int8_package: Path) -> None:
    graph = _graph(int8_package)
    float_graph = onnx.load(str(int8_package / "model.onnx")).graph
    for op in FLOAT_REGION_OPS:
        before, after = (sorted(_signature(node) for node in g.node if node.op_type == op) for g in (float_graph, graph))
        assert before and after == before, f"the {op} nodes read the same float tensors, with the same attributes"
    producers = _producers(graph)
    readers_of_int8 = [
        f"{node.op_type} {node.name}"
        for node in graph.node
        if node.op_type not in ("Conv", "Gemm", "MatMul", "QuantizeLinear")
        and any(_reads_int8(node, producers, position) for position in range(len(node.input)) if node.input[position])
    ]
    assert not readers_of_int8, "only the quantized layers read dequantized tensors"


def test_manifest_lists_the_int8_graph_with_its_gate_figures(int8_package: Path) -> None:
    manifest = read_manifest(int8_package)
    assert manifest.precisions == ["fp32", "int8"]
    assert manifest.graph_file("int8") == (INT8_GRAPH_FILE, sha256_of(int8_package / INT8_GRAPH_FILE))
    assert verify_graph_file(int8_package, manifest, "int8") == int8_package / INT8_GRAPH_FILE
    assert manifest.graph_file("fp32") == read_manifest(DEFAULT_PACKAGE).graph_file("fp32"), "the float graph is unchanged"
    assert [graph.precision for graph in manifest.graphs] == ["int8"], "the package's older int8 graph was replaced"
    gate = manifest.graphs[0].accuracy
    assert gate.val_images == 32
    assert gate.reference == "annotations" and gate.metric == "mAP@[.5:.95]"
    assert gate.map_drop <= gate.max_map_drop == QuantizeConfig.max_map_drop
    assert gate.recall >= gate.min_recall == QuantizeConfig.min_recall and gate.float_detections
    assert ModelManifest.model_validate_json(manifest.model_dump_json()) == manifest
    assert manifest.graphs[0].quantization["calibration_images"] == 16


def test_the_package_carries_validation_canvases_for_the_service_to_check_int8_on_its_own_machine(int8_package: Path) -> None:
    manifest = read_manifest(int8_package)
    assert manifest.probe_images == [f"probe/{index:03d}.jpg" for index in range(32)], "the 32 validation images"
    probe = read_probe(int8_package, manifest)
    assert probe is not None and probe.shape == (32, *manifest.canvas, 3)
    assert len({canvas.tobytes() for canvas in probe}) == 32, "32 different scenes"


def _files(package: Path) -> dict[str, str]:
    return {str(path.relative_to(package)): sha256_of(path) for path in package.rglob("*") if path.is_file()}


@pytest.mark.parametrize(
    ("config", "missed"),
    [
        (
            QuantizeConfig(max_map_drop=-1.0),
            r"on 8 validation images .* mAP@\[\.5:\.95\] dropped by .*more than the -1 allowed: missed by \d\.\d{4}\.",
        ),
        (
            QuantizeConfig(match_iou=1.0),
            r"found again \d+\.\d+% of the float graph's \d+ detections .* below the 95\.00% required: missed by",
        ),
    ],
    ids=["map-drop", "recall"],
)
def test_gate_refuses_a_graph_by_its_figures_and_writes_nothing(
    int8_package: Path, small_dataset: Path, tmp_path: Path, config: QuantizeConfig, missed: str
) -> None:
    """Without --val the last 25 % of the 16 calibration images, at least 8, are held out."""
    package = _copy(int8_package, tmp_path / "package")
    before = _files(package)
    images = read_image_set(small_dataset, 16, config.max_image_pixels)
    with pytest.raises(AccuracyGateError, match=missed) as refused:
        add_int8_graph(package, images, None, config, progress=lambda _: None)
    assert f"It was not written; {package} is unchanged" in str(refused.value)
    assert _files(package) == before, "neither the graph nor a staging folder is left, and the manifest is the old one"


def test_a_plain_folder_is_measured_against_the_float_graph_and_replaces_the_older_int8_graph(
    int8_package: Path, small_dataset: Path, tmp_path: Path
) -> None:
    package = _copy(int8_package, tmp_path / "package")
    images = read_image_set(small_dataset / "images", 16, QuantizeConfig.max_image_pixels)
    entry = add_int8_graph(package, images, None, QuantizeConfig(), progress=lambda _: None)
    manifest = read_manifest(package)
    assert [graph.precision for graph in manifest.graphs] == ["int8"] and manifest.graphs[0] == entry
    assert entry.accuracy.reference == "float_detections" and entry.accuracy.metric == "mAP@.5"
    assert entry.accuracy.float_map == pytest.approx(1.0)
    verify_graph_file(package, manifest, "int8")
    assert sorted(path.name for path in package.iterdir()) == sorted([MANIFEST_FILE, "model.onnx", INT8_GRAPH_FILE, "probe"])
    held_out = [f"probe/{index:03d}.jpg" for index in range(8)]
    assert manifest.probe_images == held_out, "the 8 held-out images replaced the older graph's 32"
    assert sorted(str(path.relative_to(package)) for path in (package / "probe").iterdir()) == held_out


def _write_images(folder: Path, count: int, broken: int = 0) -> Path:
    """``count`` good PNGs, then ``broken`` bad JPEGs (alternately truncated and not JPEG at all), and a text file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"good{index:02d}.png")
    encoded = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(encoded, "JPEG")
    for index in range(broken):
        data = encoded.getvalue()[: len(encoded.getvalue()) // 2] if index % 2 else b"\xff\xd8\xff\xe0 not really a jpeg"
        (folder / f"broken{index}.jpg").write_bytes(data)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_calibration_folder_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=f"{tmp_path / 'missing'}: no such folder"):
        read_image_set(tmp_path / "missing", 16, 10**8)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    with pytest.raises(CalibrationError, match=f"{tmp_path / 'empty'}: no images in this folder"):
        read_image_set(tmp_path / "empty", 16, 10**8)
    few = _write_images(tmp_path / "few", 15)
    with pytest.raises(CalibrationError, match=f"{few}: 15 readable images; calibration needs at least 16"):
        read_image_set(few, 16, 10**8)


def test_unreadable_images_are_skipped_with_a_warning_that_names_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _write_images(tmp_path / "mixed", 16, broken=2)
    with caplog.at_level(logging.WARNING, logger="model_export.calibration"):
        images = read_image_set(folder, 16, 10**8)
    assert len(images) == 16 and all(path.name.startswith("good") for path in images.paths)
    assert f"{folder}: skipped 2 unreadable image(s) of 18: broken0.jpg (" in caplog.text
    assert "broken1.jpg (the image data is damaged or truncated" in caplog.text
    short = _write_images(tmp_path / "short", 14, broken=3)
    with pytest.raises(CalibrationError, match=f"{short}: 14 readable images \\(3 more unreadable\\); calibration needs at least 16"):
        read_image_set(short, 16, 10**8)


def test_cli_names_the_bad_calibration_folder(int8_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = _copy(int8_package, tmp_path / "package")
    before = _files(package)
    few = _write_images(tmp_path / "few", 3)
    assert main(["quantize", "--package", str(package), "--calibration", str(few)]) == 2
    assert f"error: {few}: 3 readable images; calibration needs at least 16" in capsys.readouterr().err
    assert main(["quantize", "--package", str(package), "--calibration", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
    assert main(["quantize", "--package", str(package), "--calibration", str(few), "--min-recall", "95"]) == 2
    assert "min_recall should be within 0..1, got 95.0" in capsys.readouterr().err
    assert _files(package) == before


def test_export_checks_the_int8_options_before_exporting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = ["export", "--checkpoint", str(tmp_path / "model.pt"), "--out", str(tmp_path / "package")]
    assert main([*export, "--precision", "int8"]) == 2
    assert "--precision int8 needs --calibration DIR" in capsys.readouterr().err
    assert main([*export, "--calibration", str(tmp_path)]) == 2
    assert "--calibration and --val are for an int8 graph: add --precision int8" in capsys.readouterr().err
    assert main([*export, "--precision", "int8", "--calibration", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "package").exists()


def test_a_validation_set_of_other_classes_is_refused_by_name(
    int8_package: Path, small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    shutil.copytree(small_dataset, other)
    data = json.loads((other / "annotations.json").read_text())
    data["categories"][0]["name"] = "hexagon"
    (other / "annotations.json").write_text(json.dumps(data))
    package = _copy(int8_package, tmp_path / "package")
    assert main(["quantize", "--package", str(package), "--calibration", str(small_dataset), "--val", str(other)]) == 2
    assert f"{other / 'annotations.json'}: the data set's classes ['hexagon'," in capsys.readouterr().err


def test_export_with_precision_int8_adds_the_int8_graph_to_the_exported_package(
    small_dataset: Path, val_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export's own steps are test_export.py's; here they are stood in for by the default package, as exported."""
    import model_export.checkpoint
    import model_export.export

    float_only = read_manifest(DEFAULT_PACKAGE).model_copy(update={"graphs": []})
    loaded = SimpleNamespace(arch=float_only.arch, canvas=float_only.canvas, categories=float_only.categories)

    def export_package(_loaded: object, out: Path, _config: object) -> ModelManifest:
        out.mkdir()
        shutil.copy(DEFAULT_PACKAGE / "model.onnx", out / "model.onnx")
        float_only.write(out)
        return float_only

    monkeypatch.setattr(model_export.checkpoint, "load_checkpoint", lambda *_args, **_kwargs: loaded)
    monkeypatch.setattr(model_export.export, "export_package", export_package)
    out = tmp_path / "package"
    export = ["export", "--checkpoint", "model.pt", "--out", str(out), "--precision", "int8"]
    assert main([*export, "--calibration", str(small_dataset), "--val", str(val_set)]) == 0
    manifest = read_manifest(out)
    assert manifest.precisions == ["fp32", "int8"]
    verify_graph_file(out, manifest, "int8")


@pytest.mark.parametrize("command", ["quantize", "export"])
def test_help_shows_the_int8_options(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert "--calibration" in shown and "the last 25% of --calibration" in shown and "(default 0.95)" in shown


def test_quantize_loads_no_torch() -> None:
    loaded, stderr = _heavy_modules_after(f"import sys, model_export.quantize, model_export.int8_command\n{REPORT}")
    assert loaded == "['pycocotools']", stderr
