"""The parity report and the exporter's verdict on it: no parity is claimed over detections never compared."""

from __future__ import annotations

import numpy as np
import pytest

from model_export.detections import Detections
from model_export.export import ExportConfig, ExportError, check_parity
from model_export.parity import ParityReport, compare_detections

CONFIG = ExportConfig(parity_images=4, parity_score_threshold=0.05, parity_min_matched=0.99)


def _detections(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Detections:
    return Detections(
        np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(scores, dtype=np.float32), np.array(labels, dtype=np.int64)
    )


def test_a_comparison_of_nothing_claims_no_parity() -> None:
    nothing = _detections([], [], [])
    report = compare_detections(nothing, nothing, score_threshold=0.05, cap=10)
    assert report.compared == 0
    assert report.matched_fraction == 0.0
    assert report.to_json()["matched_fraction"] == 0.0


def test_matched_fraction_counts_both_sides() -> None:
    reference = _detections([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.6], [1, 2])
    candidate = _detections([[0, 0, 10, 10]], [0.9], [1])
    report = compare_detections(reference, candidate, score_threshold=0.05, cap=10)
    assert (report.compared, report.matched) == (3, 2)
    assert report.matched_fraction == pytest.approx(2 / 3)


def test_the_exporter_refuses_a_parity_check_that_compared_nothing() -> None:
    with pytest.raises(ExportError, match="parity check compared no detections"):
        check_parity(ParityReport(), CONFIG)


def test_the_exporter_refuses_a_graph_that_differs_from_eager() -> None:
    with pytest.raises(ExportError, match=r"parity check failed: 98 of 100 detections matched"):
        check_parity(ParityReport(compared=100, matched=98), CONFIG)


def test_the_exporter_accepts_a_graph_that_matches_eager() -> None:
    check_parity(ParityReport(compared=100, matched=99), CONFIG)
