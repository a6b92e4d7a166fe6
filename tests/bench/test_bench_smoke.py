"""`python -m bench --quick` end to end on a small real model: it produces every figure (not judged by value)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from model_export.checkpoint import LoadedModel, save_checkpoint
from model_export.export import ExportConfig, export_package

REPO = Path(__file__).resolve().parents[2]
CLIENTS = [1, 4, 16, 64]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory, random_model: Callable[..., LoadedModel]) -> tuple[Path, Path]:
    """A random compact model (calibrated to behave like a trained one): its checkpoint and its exported package."""
    root = tmp_path_factory.mktemp("bench")
    loaded = random_model("fasterrcnn_compact_fpn", num_classes=4, canvas=(128, 160), seed=3)
    save_checkpoint(root / "model.pt", loaded)
    export_package(loaded, root / "package", ExportConfig(max_batch=16, max_detections=30, parity_images=2, parity_batches=(2,)))
    return root / "model.pt", root / "package"


@pytest.fixture(scope="module")
def quick_run(small_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    checkpoint, package = small_model
    out = tmp_path_factory.mktemp("bench-out")
    command = [sys.executable, "-m", "bench", "--quick", "--devices", "cpu", "--threads", "1"]
    command += ["--checkpoint", str(checkpoint), "--package", str(package), "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=420)
    return done, out


@pytest.mark.slow
def test_quick_run_writes_the_json_the_table_and_the_plots(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert report["quick"] is True and report["machine"]["cores"] >= 1 and report["machine"]["onnxruntime"]
    assert [device["device"] for device in report["devices"]] == ["cpu"]
    table = (out / "bench.md").read_text()
    for needle in ("| system | clients |", "raw engine (no HTTP)", "naive eager FastAPI", "batching on / naive", "Goals:"):
        assert needle in table, needle
    for figure in ("throughput", "p99"):
        assert (out / f"bench-cpu-{figure}.png").read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.slow
def test_quick_run_measures_every_system_at_every_client_count(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-3000:]
    device = json.loads((out / "bench.json").read_text())["devices"][0]
    assert [raw["batch"] for raw in device["raw_engine"]] == [1, 4, 8, 16]
    assert all(raw["images_per_s"] > 0 for raw in device["raw_engine"])
    systems = {system["name"]: system for system in device["systems"]}
    assert set(systems) == {"service_batching", "service_unbatched", "naive"}
    for system in systems.values():
        assert system["error"] is None, system["error"]
        assert [level["load"]["clients"] for level in system["levels"]] == CLIENTS
        assert all(level["load"]["status"].get("200", 0) > 0 and level["load"]["latency_ms"] for level in system["levels"])
        assert system["peak_rss_mb"] > 0
    # The batch sizes come from the service's /metrics: batching off runs only batches of 1.
    unbatched = [level["batch_sizes"] for level in systems["service_unbatched"]["levels"]]
    assert all(sizes["batches"] > 0 and set(sizes["counts"]) == {"1"} for sizes in unbatched)
    assert all(level["batch_sizes"]["batches"] > 0 for level in systems["service_batching"]["levels"])
    assert all(level["batch_sizes"] is None for level in systems["naive"]["levels"])
    assert {(r["numerator"], r["denominator"]) for r in device["ratios"]} >= {
        ("service_batching", "naive"),
        ("service_batching", "raw_engine_batch_8"),
    }
    assert [goal["met"] is not None for goal in device["goals"]] == [True] * 4
