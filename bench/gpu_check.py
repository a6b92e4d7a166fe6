"""``make gpu-check``'s measurements: the engines on the GPU at batch 1 and 8 (ONNX Runtime's CUDA provider; its TensorRT
provider at fp32, fp16 and int8; the package's fp16 and int8 TensorRT engines), and the service at 16 clients against the
raw engine behind the same batcher; a few seconds each. Writes gpu_check.json and gpu_check.md into --out.

    python -m bench.gpu_check bench --package runs/gpu-check/package [--out bench/results/gpu] [--seconds 3]

Each raw configuration runs in a process of its own with a time limit: an execution provider that cannot start, hangs
building its engines or crashes is reported as such, and the others are still measured. Figures are from one short run:
a check that the GPU path works and a first idea of its speed, not figures to publish.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import report, runner
from bench.config import BenchConfig, Configuration, ThroughputPlan
from bench.figures import ServiceThroughputSection
from bench.images import write_images
from bench.machine import describe
from bench.raw_engine import build_engine, canvases, measure
from bench.servers import REPO
from service.engines import Engine
from service.gpu import gpu_names, gpu_problem
from service.manifest import ModelManifest, read_manifest

RESULTS = REPO / "bench" / "results" / "gpu"
BATCHES = (1, 8)
SERVICE_CLIENTS = 16
IMAGE_COUNT = 24
# A configuration that is not measured within this (TensorRT builds its engines at the first run) is reported as timed out.
CONFIGURATION_TIME_LIMIT_S = 150


def configurations(package: Path) -> list[Configuration]:
    ort_tensorrt = {"DETECTOR_ENGINE": "onnxruntime", "DETECTOR_PROVIDERS": "tensorrt,cuda,cpu"}
    trt_cache = str(package / "ort-trt-cache")  # one engine cache: the provider names each engine by its graph and precision
    return [
        Configuration(
            "ort-cuda", "ONNX Runtime, CUDA provider (fp32 graph)", {"DETECTOR_ENGINE": "onnxruntime", "DETECTOR_PROVIDERS": "cuda,cpu"}
        ),
        Configuration(
            "ort-tensorrt",
            "ONNX Runtime, TensorRT provider (fp32 graph; NMS, RoiAlign on CUDA)",
            ort_tensorrt | {"DETECTOR_TRT_CACHE_DIR": trt_cache},
        ),
        Configuration(
            "ort-tensorrt-fp16",
            "ONNX Runtime, TensorRT provider (fp32 graph, trt_fp16)",
            ort_tensorrt | {"DETECTOR_TRT_CACHE_DIR": trt_cache, "DETECTOR_TRT_FP16": "true"},
        ),
        Configuration(
            "ort-tensorrt-int8",
            "ONNX Runtime, TensorRT provider (int8 Q/DQ graph)",
            ort_tensorrt | {"DETECTOR_TRT_CACHE_DIR": trt_cache, "DETECTOR_PRECISION": "int8"},
        ),
        Configuration("tensorrt-fp16", "TensorRT engine (fp16, whole graph)", {"DETECTOR_ENGINE": "tensorrt"}, "fp16"),
        Configuration("tensorrt-int8", "TensorRT engine (int8 Q/DQ graph, whole graph)", {"DETECTOR_ENGINE": "tensorrt"}, "int8"),
    ]


def open_engine(package: Path, manifest: ModelManifest, config: Configuration) -> Engine:
    if config.tensorrt_precision is None:
        return build_engine(package, manifest, config.env)
    from service.engines.tensorrt import TensorRTEngine

    return TensorRTEngine(package, manifest, config.tensorrt_precision)


def timed_runs(engine: Engine, images: np.ndarray, batch: int, seconds: float, thresholds: tuple[float, float]) -> dict[str, Any]:
    """About ``seconds`` of runs at this batch size: a short run first tells how many fit."""
    probe = measure(engine, images, batch, 5 * batch, *thresholds)
    per_batch_s = max(probe.seconds / max(probe.images // batch, 1), 1e-4)
    count = int(min(max(seconds / per_batch_s, 5), 5000)) * batch
    return measure(engine, images, batch, count, *thresholds).model_dump()


def measure_configuration(package: Path, name: str, seconds: float) -> dict[str, Any]:
    """One configuration's raw figures (run in a child process by ``run_configuration``)."""
    config = next(c for c in configurations(package) if c.name == name)
    manifest = read_manifest(package)
    with tempfile.TemporaryDirectory() as scratch:
        images = canvases(write_images(Path(scratch), IMAGE_COUNT).bodies, manifest.canvas)
    engine = open_engine(package, manifest, config)
    thresholds = (manifest.score_threshold, manifest.iou_threshold)
    rows = [timed_runs(engine, images, batch, seconds, thresholds) for batch in BATCHES if batch <= engine.max_batch]
    return {"name": name, "label": config.label, "status": "measured", "engine": engine.describe().model_dump(mode="json"), "rows": rows}


def run_configuration(package: Path, config: Configuration, seconds: float) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "bench.gpu_check",
        "raw",
        "--package",
        str(package),
        "--config",
        config.name,
        "--seconds",
        str(seconds),
    ]
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=CONFIGURATION_TIME_LIMIT_S, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return {"name": config.name, "label": config.label, "status": f"timed out after {CONFIGURATION_TIME_LIMIT_S} s"}
    result: dict[str, Any]
    if done.returncode == 0:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    else:
        result = {"name": config.name, "label": config.label, "status": "failed", "error": done.stderr.strip()[-1500:]}
    return result | {"wall_s": round(time.monotonic() - started, 1)}


def service_against_raw(package: Path, requests_per_client: int) -> ServiceThroughputSection:
    """The service over HTTP at 16 clients, and the package's TensorRT engine behind the same batcher without HTTP:
    ``python -m bench``'s service-throughput section, one round."""
    config = BenchConfig(
        package=package,
        devices=("gpu",),
        sections=("service-throughput",),
        gpu_engine="tensorrt",
        image_count=IMAGE_COUNT,
        throughput=ThroughputPlan(clients=SERVICE_CLIENTS, requests_per_client=requests_per_client, rounds=1),
    )
    section = runner.run(config, "python -m bench.gpu_check bench").devices[0].service_throughput
    if section is None:
        raise RuntimeError("the service-throughput section was not measured")
    return section


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# GPU check: {', '.join(result['gpus']) or 'unknown GPU'}", "", "## Raw engines (no HTTP, canvases ready)", ""]
    lines += ["| configuration | batch | images/s | batch p50 ms | batch p99 ms |", "|---|---|---|---|---|"]
    for config in result["raw"]:
        if config["status"] != "measured":
            why = " ".join(config.get("error", "").split())[-300:]
            lines.append(f"| {config['label']} | | {config['status']}{': ' + why if why else ''} | | |")
        for row in config.get("rows", []):
            latency = row["batch_latency_ms"]
            lines.append(f"| {config['label']} | {row['batch']} | {row['images_per_s']} | {latency['p50']} | {latency['p99']} |")
    service = ServiceThroughputSection.model_validate(result["service"])
    engine = f"TensorRT {service.engine.precision} engine"
    lines += ["", f"## The service at {service.clients} clients against the raw engine ({engine}, same batcher)", ""]
    lines += report.throughput_section(service)
    lines += [
        "",
        f"Steps: {'; '.join(result['steps'])}." if result["steps"] else "",
        "One short run per configuration: a check, not figures to publish.",
    ]
    return "\n".join(lines) + "\n"


def run_bench(args: argparse.Namespace) -> int:
    package = args.package.resolve()
    raw = []
    for config in configurations(package):
        raw.append(run_configuration(package, config, args.seconds))
        print(f"{config.label}: {raw[-1]['status']} {[r['images_per_s'] for r in raw[-1].get('rows', [])]}", file=sys.stderr, flush=True)
    service = service_against_raw(package, args.requests)
    print(f"service at {SERVICE_CLIENTS} clients: {service.service_images_per_s} images/s", file=sys.stderr, flush=True)
    steps = args.steps.read_text().strip().splitlines() if args.steps and args.steps.is_file() else []
    result = {"benchmark": "gpu_check", "gpus": gpu_names(), "machine": describe(), "seconds_per_configuration": args.seconds}
    result |= {"raw": raw, "service": service.model_dump(mode="json"), "steps": steps}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    measured = [config for config in raw if config["status"] == "measured"]
    # The TensorRT provider may not start (it needs TensorRT 10's libraries, see service.engines.onnxruntime): reported, not fatal.
    engines_measured = {"tensorrt-fp16", "tensorrt-int8"} <= {config["name"] for config in measured}
    return 0 if engines_measured and service.error is None else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="measure every configuration and the service; write the results")
    bench.add_argument(
        "--package",
        type=Path,
        required=True,
        help="a package with fp16 and int8 TensorRT engines for this GPU (build-engine --fp16, --int8)",
    )
    bench.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: %(default)s)")
    bench.add_argument("--seconds", type=float, default=3.0, help="timed seconds per configuration and batch size (default 3)")
    bench.add_argument("--requests", type=int, default=40, help="requests per client for the service and the raw engine (default 40)")
    bench.add_argument("--steps", type=Path, help="a file of 'step: seconds' lines from gpu-check.sh, copied into the results")
    raw = commands.add_parser("raw", help="(internal) one configuration's raw figures, as one JSON line")
    raw.add_argument("--package", type=Path, required=True)
    raw.add_argument("--config", required=True)
    raw.add_argument("--seconds", type=float, default=3.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = gpu_problem()
    if problem is not None:
        print(f"error: {problem}; the GPU check needs an NVIDIA GPU and its driver", file=sys.stderr)
        return 2
    if args.command == "raw":
        print(json.dumps(measure_configuration(args.package.resolve(), args.config, args.seconds)))
        return 0
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
