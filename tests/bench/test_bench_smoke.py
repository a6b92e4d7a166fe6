"""`python -m bench --quick` end to end on a small real model: every section produces its figures (not judged by
value), and a section measured alone is merged into the report, keeping the run that measured each. The precisions
section on the default model (whose classes are the synthetic scenes'), for its mAP against the eager checkpoint's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.servers import REPO
from model_export.checkpoint import LoadedModel, save_checkpoint
from model_export.export import ExportConfig, export_package

CLIENTS = [1, 4, 16, 64]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_model(tmp_path_factory: pytest.TempPathFactory, small_model: LoadedModel) -> tuple[Path, Path]:
    """The small model's checkpoint, and its package exported with batches up to 16 (the raw engine's largest)."""
    root = tmp_path_factory.mktemp("bench")
    save_checkpoint(root / "model.pt", small_model)
    export_package(small_model, root / "package", ExportConfig(max_batch=16, max_detections=30, parity_images=2, parity_batches=(2,)))
    return root / "model.pt", root / "package"


def run_bench(model: tuple[Path, Path], out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    checkpoint, package = model
    command = [sys.executable, "-m", "bench", "--quick", "--devices", "cpu", "--threads", "1", *options]
    command += ["--checkpoint", str(checkpoint), "--package", str(package), "--out", str(out), "--cache", str(out / "cache")]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=420)


@pytest.fixture(scope="module")
def quick_run(bench_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench-out")
    return run_bench(bench_model, out), out


def cpu_sections(out: Path) -> dict[str, Any]:
    report = json.loads((out / "bench.json").read_text())
    assert [device["device"] for device in report["devices"]] == ["cpu"]
    return dict(report["devices"][0])


def test_quick_run_writes_the_json_the_table_and_the_plots(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-3000:]
    device = cpu_sections(out)
    runs = [device[name]["run"] for name in ("systems", "service_throughput", "export_speed", "precisions", "protocols", "train_step")]
    assert all(run == runs[0] for run in runs), "one run measured every section"
    assert runs[0]["quick"] is True and runs[0]["machine"]["cores"] >= 1 and runs[0]["machine"]["onnxruntime"]
    assert 0 <= runs[0]["others_cpu_share"] <= 1, "how much of the cores other work took is measured"
    table = (out / "bench.md").read_text()
    for needle in ("| system | clients |", "raw engine (no HTTP)", "naive eager FastAPI", "batching on / naive", "Goals:"):
        assert needle in table, needle
    for needle in (
        "### Service throughput",
        "raw engine behind the batcher",
        "### Export speed",
        "| batch | eager ms/image |",
        "### Precisions",
        "### Protocols",
        "### Training step",
        "| box batch (RoIs per image) |",
    ):
        assert needle in table, needle
    for figure in ("throughput", "p99"):
        assert (out / f"bench-cpu-{figure}.png").read_bytes().startswith(PNG_SIGNATURE)


def test_quick_run_measures_every_system_at_every_client_count(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-3000:]
    device = cpu_sections(out)["systems"]
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


def test_quick_run_measures_the_service_against_its_batcher_and_the_graph_against_eager(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-3000:]
    sections = cpu_sections(out)
    throughput = sections["service_throughput"]
    assert throughput["error"] is None, throughput["error"]
    assert throughput["clients"] == 16 and len(throughput["rounds"]) == 1
    assert throughput["raw_images_per_s"] > 0 and throughput["service_images_per_s"] > 0 and throughput["ratio"] > 0
    assert throughput["rounds"][0]["service"]["status"] == {"200": 16 * throughput["requests_per_client"]}
    assert throughput["batch_sizes"]["batches"] > 0, "the service's graph runs over the rounds, from /metrics"
    speed = sections["export_speed"]
    assert [row["batch"] for row in speed["rows"]] == [1, 4, 8]
    assert all(row["eager_ms_per_image"] > 0 and row["graph_ms_per_image"] > 0 for row in speed["rows"])
    assert speed["eager"]["device"] == "cpu" and speed["engine"]["engine"] == "onnxruntime"
    for section in (throughput, speed):
        assert section["goals"] and all(goal["met"] is not None for goal in section["goals"])


def test_quick_run_measures_http_and_grpc_side_by_side(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-3000:]
    protocols = cpu_sections(out)["protocols"]
    assert protocols["error"] is None, protocols["error"]
    requests = protocols["clients"] * protocols["requests_per_client"]
    assert protocols["clients"] == 16 and len(protocols["rounds"]) == 1
    assert protocols["rounds"][0]["http"]["status"] == {"200": requests}
    assert protocols["rounds"][0]["grpc"]["status"] == {"OK": requests}, "every gRPC call answered OK"
    for name in ("http", "grpc"):
        assert protocols[f"{name}_images_per_s"] > 0 and protocols[f"{name}_p99_ms"] > 0
    assert protocols["engine"]["engine"] == "onnxruntime"
    assert "| 1 | gRPC |" in (out / "bench.md").read_text()


def test_quick_run_times_a_training_step_with_each_roi_align(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-3000:]
    step = cpu_sections(out)["train_step"]
    assert step["batch_size"] == 2 and step["rounds"] == 1 and step["torch"]["device"] == "cpu"
    assert [row["box_batch"] for row in step["rows"]] == [64]
    for row in step["rows"]:
        assert row["torchvision_s"] > 0 and row["bags_s"] > 0
        assert row["ratio"] == pytest.approx(row["bags_s"] / row["torchvision_s"], abs=0.01)
    assert [goal["met"] is not None for goal in step["goals"]] == [True]


def test_a_section_run_alone_is_merged_into_the_report(
    bench_model: tuple[Path, Path], quick_run: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    done, out = quick_run
    assert done.returncode == 0, done.stderr[-3000:]
    before = cpu_sections(out)
    again = run_bench(bench_model, out, "--only", "export-speed")
    assert again.returncode == 0, again.stderr[-3000:]
    after = cpu_sections(out)
    assert after["systems"] == before["systems"] and after["service_throughput"] == before["service_throughput"]
    assert after["export_speed"]["run"]["started"] != before["export_speed"]["run"]["started"]
    assert "--only export-speed" in after["export_speed"]["run"]["command"]
    table = (out / "bench.md").read_text()
    assert "- Run 1:" in table and "- Run 2:" in table and "(`--only export-speed`, run 2)" in table


def run_precisions(out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``--quick --only precisions`` on the default model, its two f32 configurations, a few requests and scenes."""
    command = [sys.executable, "-m", "bench", "--quick", "--only", "precisions", "--devices", "cpu", "--threads", "1"]
    command += ["--clients", "1,4", "--requests", "4", "--eval-images", "4", "--cache", str(out / "cache"), "--out", str(out), *options]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=420)


def test_precisions_measures_each_configuration_raw_served_and_scored_against_eager(tmp_path: Path) -> None:
    done = run_precisions(tmp_path, "--configurations", "onnxruntime-f32,openvino-f32,auto")
    assert done.returncode == 0, done.stderr[-3000:]
    section = cpu_sections(tmp_path)["precisions"]
    rows = {row["name"]: row for row in section["rows"]}
    assert list(rows) == ["onnxruntime-f32", "openvino-f32", "auto"] and section["baseline"] == "onnxruntime-f32"
    assert section["eval_set"] == {"seed": 13, "images": 4, "score_threshold": 0.05, "unscored": None}
    eager = section["eager"]
    assert eager["detections"] > 0
    for name, row in rows.items():
        assert row["skipped"] is None, row["skipped"]
        assert [raw["batch"] for raw in row["raw"]] == [1, 8, 16] and all(raw["images_per_s"] > 0 for raw in row["raw"])
        assert row["service"]["error"] is None and [level["load"]["status"] for level in row["service"]["levels"]] == [{"200": 4}] * 2
        served = row["service"]["runtime"]
        assert (row["engine"]["engine"], row["engine"]["precision"]) == (served["engine"], served["precision"]), name
        assert row["accuracy"]["detections"] > 0 and row["throughput_ratio"] > 0 and row["latency_ratio"] > 0
    for name, engine in (("onnxruntime-f32", "onnxruntime"), ("openvino-f32", "openvino")):
        assert (rows[name]["engine"]["engine"], rows[name]["engine"]["precision"]) == (engine, "fp32")
        # The same float graph as the checkpoint: its mAP on the same scenes is the eager model's.
        assert abs(rows[name]["accuracy"]["map"] - eager["map"]) <= 0.01
    assert rows["auto"]["settings"] == {}, "auto is the service with its defaults; its raw engine is the one it chose"
    assert rows["onnxruntime-f32"]["throughput_ratio"] == rows["onnxruntime-f32"]["latency_ratio"] == 1.0
    assert [goal["met"] is not None for goal in section["goals"]] == [True] * 3
    table = (tmp_path / "bench.md").read_text()
    for needle in ("### Precisions (`--only precisions`)", "| configuration | runs on |", "| eager checkpoint |", "OpenVINO f32"):
        assert needle in table, needle
    assert (tmp_path / "bench-cpu-precisions.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (tmp_path / "cache" / "synth-seed13-4" / "annotations.json").is_file(), "the scenes are kept for the next run"


def test_precisions_refuses_an_unknown_configuration(tmp_path: Path) -> None:
    done = run_precisions(tmp_path, "--configurations", "onnxruntime-f32,openvino-f16")
    assert done.returncode == 2
    assert "no configuration openvino-f16" in done.stderr and "openvino-bf16" in done.stderr
    assert not (tmp_path / "bench.json").exists()
