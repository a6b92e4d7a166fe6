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
    assert set(saved["per_class"]) == set(load_dataset(small_dataset).categories[1:]) or len(saved["per_class"]) == 7
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mAP@.5" in format_table(report)
