from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_export.coco import load_dataset
from model_export.evaluate import coco_metrics, format_table, write_report


def _ground_truth_as_results(root: Path, shift: float = 0.0) -> list[dict]:
    data = json.loads((root / "annotations.json").read_text())
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": [a["bbox"][0] + shift * a["bbox"][2], *a["bbox"][1:]],
            "score": 1.0,
        }
        for a in data["annotations"]
    ]


def test_ground_truth_scores_perfectly(small_dataset: Path) -> None:
    report = coco_metrics(load_dataset(small_dataset), _ground_truth_as_results(small_dataset))
    assert report.map == pytest.approx(1.0)
    assert report.map50 == pytest.approx(1.0)


def test_shifted_boxes_score_less(small_dataset: Path) -> None:
    dataset = load_dataset(small_dataset)
    report = coco_metrics(dataset, _ground_truth_as_results(small_dataset, shift=0.3))
    assert 0.0 < report.map < 0.9
    # A 30% shift keeps IoU at about 0.54: still a match at 0.5.
    assert report.map50 > report.map


def test_no_detections_score_zero(small_dataset: Path) -> None:
    report = coco_metrics(load_dataset(small_dataset), [])
    assert report.map == 0.0 and report.map50 == 0.0


def test_report_files(small_dataset: Path, tmp_path: Path) -> None:
    report = coco_metrics(load_dataset(small_dataset), _ground_truth_as_results(small_dataset, shift=0.1))
    write_report(report, tmp_path / "eval.json", tmp_path / "pr.png")
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert set(saved) >= {"map", "map50", "per_class"}
    assert list(saved["per_class"]) == load_dataset(small_dataset).categories[1:]
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mAP@.5" in format_table(report)


def test_per_class_ap_belongs_to_its_class(small_dataset: Path) -> None:
    # Ground truth for every class but one: that class scores 0 under its own name, every other 1.
    dataset = load_dataset(small_dataset)
    missing = dataset.category_ids[1]
    results = [r for r in _ground_truth_as_results(small_dataset) if r["category_id"] != missing]
    report = coco_metrics(dataset, results)
    present = {dataset.categories[dataset.category_ids.index(r["category_id"])] for r in results}
    assert len(present) >= 5 and report.per_class[dataset.categories[1]] == 0.0
    assert {name: ap for name, ap in report.per_class.items() if name in present} == pytest.approx(dict.fromkeys(present, 1.0))
