"""Export of every supported architecture: the graph's contract, TensorRT-compatible operators, parity with eager."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from model_export.__main__ import main
from model_export.architectures import ARCHITECTURES, COMPACT_ARCH
from model_export.checkpoint import LoadedModel, save_checkpoint
from model_export.detections import Detections
from model_export.evaluate import eager_predictor
from model_export.export import ExportConfig, ExportError, eager_thresholds, export_package
from model_export.package import OnnxPredictor
from model_export.parity import ParityReport, compare_detections
from model_export.tensorrt_ops import SUPPORTED_OPS, check_graph
from service.manifest import MANIFEST_FILE, ONNX_FILE

SCORE_THRESHOLD = 0.3  # for tests that need no mix
IOU_THRESHOLD = 0.5
LOOSE_IOU_THRESHOLD = 0.8  # a second NMS threshold: it keeps more overlapping boxes, and parity must hold at it too
MAX_DETECTIONS = 50


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def exported(request: pytest.FixtureRequest, random_model, tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, Path]:  # type: ignore[no-untyped-def]
    loaded = random_model(request.param)
    package = tmp_path_factory.mktemp(request.param) / "package"
    config = ExportConfig(max_batch=16, max_detections=MAX_DETECTIONS, parity_images=4, parity_batches=(1, 3))
    export_package(loaded, package, config)
    return loaded, package


def _eager_alone(
    loaded: LoadedModel, canvases: np.ndarray, score_threshold: float, iou_threshold: float = IOU_THRESHOLD
) -> list[Detections]:
    with eager_thresholds(loaded.model, score_threshold, iou_threshold, MAX_DETECTIONS):
        predict = eager_predictor(loaded.model)
        return [predict(canvases[i : i + 1])[0] for i in range(len(canvases))]


def _run_in_batches(runner: OnnxPredictor, canvases: np.ndarray, batch: int, score_threshold: float) -> list[Detections]:
    results: list[Detections] = []
    for start in range(0, len(canvases), batch):
        results += runner.run(canvases[start : start + batch], score_threshold, IOU_THRESHOLD)
    return results


def _mixing_threshold(loaded: LoadedModel, canvases: np.ndarray) -> float:
    """A score threshold at which some images have many detections, some few and some none.

    A random model scores every image alike; its images differ in their best
    score, so a threshold between the best scores mixes the three cases.
    """
    best = sorted(float(d.scores[0]) for d in _eager_alone(loaded, canvases, 0.05) if len(d.scores))
    return best[1] + 1e-3  # the two least confident images get no detections


def test_graph_has_the_contracted_inputs_and_outputs(exported: tuple[LoadedModel, Path]) -> None:
    loaded, package = exported
    graph = onnx.load(str(package / ONNX_FILE)).graph
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    inputs = {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in graph.input}
    outputs = {v.name: (v.type.tensor_type.elem_type, dims(v)) for v in graph.output}
    h, w = loaded.canvas
    assert inputs == {
        "images": (onnx.TensorProto.UINT8, ["batch", h, w, 3]),
        "score_threshold": (onnx.TensorProto.FLOAT, []),
        "iou_threshold": (onnx.TensorProto.FLOAT, []),
    }
    assert outputs == {
        "num_detections": (onnx.TensorProto.INT64, ["batch"]),
        "boxes": (onnx.TensorProto.FLOAT, ["batch", MAX_DETECTIONS, 4]),
        "scores": (onnx.TensorProto.FLOAT, ["batch", MAX_DETECTIONS]),
        "labels": (onnx.TensorProto.INT64, ["batch", MAX_DETECTIONS]),
    }
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    assert manifest["categories"] == loaded.categories and manifest["canvas"] == [h, w]
    # The manifest records the check the export ran (the parity itself is measured by the tests below, not read back).
    parity = manifest["parity"]
    assert (parity["images"], parity["batch_sizes"], parity["score_threshold"]) == (4, [1, 3], 0.05)
    assert parity["compared"] > 0 and parity["matched"] <= parity["compared"]


def test_graph_uses_only_operators_tensorrt_parses_natively(exported: tuple[LoadedModel, Path]) -> None:
    model = onnx.load(str(exported[1] / ONNX_FILE))
    op_types = {node.op_type for node in model.graph.node}
    assert op_types <= SUPPORTED_OPS, op_types - SUPPORTED_OPS
    assert {"NonMaxSuppression", "RoiAlign", "TopK"} <= op_types
    assert not op_types & {"Loop", "If", "Scan", "SplitToSequence", "MaxRoiPool"}
    assert check_graph(model) == []
    for node in model.graph.node:
        if node.op_type == "RoiAlign":
            modes = [a.s.decode() for a in node.attribute if a.name == "coordinate_transformation_mode"]
            assert modes == ["output_half_pixel"], "torchvision's aligned=False must be written explicitly"


def test_parity_with_eager_at_every_batch_size(exported: tuple[LoadedModel, Path], canvases) -> None:  # type: ignore[no-untyped-def]
    loaded, package = exported
    images = canvases(loaded.canvas, 16)
    threshold = _mixing_threshold(loaded, images)
    reference = _eager_alone(loaded, images, threshold)
    counts = [len(d.scores) for d in reference]
    assert max(counts) >= 10 and 0 in counts and any(0 < c < 10 for c in counts), f"want many, few and no detections: {counts}"
    runner = OnnxPredictor(package)
    for batch in (1, 2, 5, 16):
        report = ParityReport()
        for ref, got in zip(reference, _run_in_batches(runner, images, batch, threshold), strict=False):
            report.add(compare_detections(ref, got, threshold, MAX_DETECTIONS))
        assert report.compared >= sum(counts), "ties left too little to compare"
        assert report.matched_fraction >= 0.99, f"batch {batch}: {report.to_json()}"


def test_results_do_not_depend_on_batch_company(exported: tuple[LoadedModel, Path], canvases) -> None:  # type: ignore[no-untyped-def]
    loaded, package = exported
    images = canvases(loaded.canvas, 12, seed=5)
    runner = OnnxPredictor(package)
    alone = runner.run(images[:1], SCORE_THRESHOLD, IOU_THRESHOLD)[0]
    for company in (images[1:4], images[4:12], images[::-1][:7]):
        batched = runner.run(np.concatenate([images[:1], company]), SCORE_THRESHOLD, IOU_THRESHOLD)[0]
        assert len(batched.scores) == len(alone.scores)
        np.testing.assert_allclose(batched.boxes, alone.boxes, atol=1e-3)
        np.testing.assert_allclose(batched.scores, alone.scores, atol=1e-5)
        np.testing.assert_array_equal(batched.labels, alone.labels)


def test_thresholds_are_run_time_inputs(exported: tuple[LoadedModel, Path], canvases) -> None:  # type: ignore[no-untyped-def]
    loaded, package = exported
    images = canvases(loaded.canvas, 4)
    threshold = _mixing_threshold(loaded, images)  # below the detection cap, so that a looser NMS has room to keep more
    runner = OnnxPredictor(package)
    low = runner.run(images, threshold, IOU_THRESHOLD)
    higher = float(np.median(np.concatenate([d.scores for d in low])))  # half of the detections lie above it
    high = runner.run(images, higher, IOU_THRESHOLD)
    loose = runner.run(images, threshold, LOOSE_IOU_THRESHOLD)
    for a, b, c in zip(low, high, loose, strict=True):
        assert len(b.scores) <= len(a.scores) <= len(c.scores)
        assert (b.scores > higher).all()
        assert (np.diff(a.scores) <= 0).all(), "scores must be descending"
    counts = {name: sum(len(d.scores) for d in run) for name, run in (("high", high), ("low", low), ("loose", loose))}
    assert counts["high"] < counts["low"] < counts["loose"], f"a threshold made no difference: {counts}"
    # The graph's NMS at the second IoU threshold is the eager model's at that threshold.
    report = ParityReport()
    for ref, got in zip(_eager_alone(loaded, images, threshold, LOOSE_IOU_THRESHOLD), loose, strict=True):
        report.add(compare_detections(ref, got, threshold, MAX_DETECTIONS))
    assert report.compared >= counts["low"] and report.matched_fraction >= 0.99, report.to_json()


def _save(loaded: LoadedModel, path: Path) -> Path:
    save_checkpoint(path, loaded)
    return path


def test_cli_refuses_a_canvas_the_backbone_cannot_take(random_model, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    checkpoint = _save(random_model(COMPACT_ARCH), tmp_path / "model.pt")
    code = main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "pkg"), "--canvas", "300x300"])
    assert code == 2
    assert "canvas 300x300 is not divisible by 32" in capsys.readouterr().err
    assert not (tmp_path / "pkg").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "nothing half-written is left"


def test_cli_refuses_max_batch_below_one(random_model, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    checkpoint = _save(random_model(COMPACT_ARCH), tmp_path / "model.pt")
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "pkg"), "--max-batch", "0"]) == 2
    assert "max_batch should be at least 1, got 0" in capsys.readouterr().err


def test_cli_refuses_weights_of_another_architecture(random_model, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    loaded = random_model(COMPACT_ARCH)
    torch.save(loaded.model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "classes.json").write_text(json.dumps(loaded.categories))
    code = main(
        [
            "export",
            "--checkpoint",
            str(tmp_path / "weights.pt"),
            "--arch",
            "fasterrcnn_mobilenet_v3_large_fpn",
            "--categories",
            str(tmp_path / "classes.json"),
            "--out",
            str(tmp_path / "pkg"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "do not fit architecture fasterrcnn_mobilenet_v3_large_fpn" in err and "missing keys" in err
    assert not (tmp_path / "pkg").exists()


def test_cli_refuses_an_unknown_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint", str(tmp_path / "x.pt"), "--arch", "yolo", "--out", str(tmp_path / "pkg")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'yolo'" in capsys.readouterr().err


def test_export_config_validates_limits() -> None:
    with pytest.raises(ExportError, match="max_detections should be at least 1"):
        ExportConfig(max_detections=0)
    with pytest.raises(ExportError, match=r"score_threshold should be within 0\.\.1"):
        ExportConfig(score_threshold=1.5)


def test_build_engine_without_gpu_says_so(small_package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A good package passes the checks that come first; then the missing GPU stops the build."""
    from service.gpu import has_gpu

    if has_gpu():
        pytest.skip("a GPU is present")
    assert main(["build-engine", "--package", str(small_package), "--batch", "1:4:8"]) == 2
    assert "no NVIDIA GPU" in capsys.readouterr().err
