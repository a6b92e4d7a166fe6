"""The precisions section: every engine and precision this machine can run, side by side in one run.

The configurations: on the CPU, ONNX Runtime f32 (the baseline) and int8 (the package's model.int8.onnx), OpenVINO
f32, int8 and bf16; on a GPU, ONNX Runtime f32 with the CUDA (the baseline there) and the TensorRT execution providers,
and the package's TensorRT engines (f32, int8). And "auto": the service with DETECTOR_ENGINE and DETECTOR_PRECISION
unset, on the run's last device; its raw engine is the configuration its /v1/models runtime says it chose. Each engine
is built by the service's own factory; one the machine or package cannot run (bf16 without the CPU's BF16, a graph or
engine the package lacks, a runtime not installed) is listed as skipped, with the engine's own reason.

Each gets: the raw graph (no HTTP) at batch 1, 8 and 16, the configurations alternating round by round in a rotating
order so that the machine's noise hits all alike; its service under the run's load plan, measured as the systems
section measures a server; mAP@[.5:.95] and mAP@.5 on held-out synthetic scenes (seed 13), scored as
``python -m model_export evaluate`` scores them, beside the eager checkpoint's on the same scenes.
"""

from __future__ import annotations

import gc
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import raw_engine
from bench.compare import GOAL_CLIENTS, _divide
from bench.config import BenchConfig, BenchError, Configuration, PrecisionsPlan, progress
from bench.figures import Accuracy, EvalSet, Goal, Latency, PrecisionRow, PrecisionsSection, RawResult, Run, SystemResult
from bench.images import ImageSet
from bench.servers import service_spec
from bench.systems import effective_batch, measure_system, service_env
from model_export.coco import ANNOTATIONS_FILE, CocoDataset, load_dataset
from model_export.config import SynthConfig
from model_export.detections import BatchPredictor, Detections
from model_export.evaluate import EvalReport, eager_predictor, evaluate
from service.engines import Engine
from service.engines.base import EngineInfo
from service.engines.onnxruntime import PROVIDER_NAMES
from service.manifest import ModelManifest

BASELINE = "onnxruntime-f32"
AUTO = "auto"
ENGINE_SETTINGS = ("DETECTOR_ENGINE", "DETECTOR_PRECISION", "DETECTOR_PROVIDERS")
# What building an engine raises when this machine or package cannot run it: the reason a configuration is skipped.
CANNOT_RUN = (RuntimeError, ValueError, ImportError, OSError)
EVAL_SCORE_THRESHOLD = 0.05  # the detections mAP scores, as `python -m model_export evaluate` keeps them
EVAL_BATCH = 8


def check_names(names: tuple[str, ...], cache: Path) -> None:
    """BenchError naming each of ``names`` that is no configuration on any device."""
    known = [c.name for device in ("cpu", "gpu") for c in configurations(device, cache, with_auto=True)]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise BenchError(
            f"--configurations {','.join(names)}: no configuration {', '.join(unknown)}; they are {', '.join(dict.fromkeys(known))}"
        )


def _ort(precision: str, providers: str) -> dict[str, str]:
    return {"DETECTOR_ENGINE": "onnxruntime", "DETECTOR_PRECISION": precision, "DETECTOR_PROVIDERS": providers}


def configurations(device: str, cache: Path, with_auto: bool) -> list[Configuration]:
    """What this section tries on ``device``, the baseline first; ``with_auto`` adds the service's own choice."""
    if device == "cpu":
        found = [
            Configuration(BASELINE, "ONNX Runtime f32", _ort("f32", "cpu")),
            Configuration("onnxruntime-int8", "ONNX Runtime int8", _ort("int8", "cpu")),
            *(
                Configuration(f"openvino-{p}", f"OpenVINO {p}", {"DETECTOR_ENGINE": "openvino", "DETECTOR_PRECISION": p})
                for p in ("f32", "int8", "bf16")
            ),
        ]
    else:
        tensorrt_provider = _ort("f32", "tensorrt,cuda,cpu") | {"DETECTOR_TRT_CACHE_DIR": str(cache / "ort-trt-cache")}
        found = [
            Configuration(BASELINE, "ONNX Runtime f32, CUDA provider", _ort("f32", "cuda,cpu")),
            Configuration("onnxruntime-tensorrt-f32", "ONNX Runtime f32, TensorRT provider", tensorrt_provider),
            *(
                Configuration(f"tensorrt-{p}", f"TensorRT engine {p}", {"DETECTOR_ENGINE": "tensorrt", "DETECTOR_PRECISION": p})
                for p in ("f32", "int8")
            ),
        ]
    return found + ([Configuration(AUTO, "auto (the service's defaults)", {})] if with_auto else [])


def build(
    config: BenchConfig, manifest: ModelManifest, configuration: Configuration, device: str, auto: SystemResult | None = None
) -> tuple[PrecisionRow, Engine | None]:
    """The row, and its engine as the service would build it; no engine (the row says why) where it cannot run here.
    ``auto``: the service with its defaults, already measured: its row's engine is the configuration it chose."""
    row = PrecisionRow(name=configuration.name, label=configuration.label, settings=configuration.env, service=auto)
    try:
        env = configuration.env if auto is None else chosen_env(auto)
        engine = raw_engine.build_engine(config.package, manifest, {"DETECTOR_INTRA_OP_THREADS": str(config.threads)} | env)
    except CANNOT_RUN as error:
        row.skipped = " ".join(f"{type(error).__name__}: {error}".split())
        progress(f"[{device}] {configuration.label}: skipped: {row.skipped}")
        return row, None
    row.engine = engine.describe()
    return row, engine


def chosen_env(service: SystemResult) -> dict[str, str]:
    """The DETECTOR_* variables that name, explicitly, the engine a service says it runs (its /v1/models runtime)."""
    if "engine" not in service.runtime:
        raise RuntimeError(f"the service with its default settings did not start: {service.error}")
    runs = EngineInfo.model_validate(service.runtime)
    # fp16: TensorRT's precision auto (its most reduced engine built), or ONNX Runtime's TensorRT provider's fp16 kernels.
    env = {"DETECTOR_ENGINE": runs.engine, "DETECTOR_PRECISION": {"fp32": "f32", "fp16": "auto"}.get(runs.precision, runs.precision)}
    if runs.engine == "onnxruntime":
        names = {provider: name for name, provider in PROVIDER_NAMES.items()}
        env["DETECTOR_PROVIDERS"] = ",".join(names[p] for p in runs.details.get("providers", []) if p in names)
        env |= {"DETECTOR_PRECISION": "f32", "DETECTOR_TRT_FP16": "true"} if runs.precision == "fp16" else {}
    return env


def _raw_result(batch: int, times: list[float]) -> RawResult:
    latency = Latency.of(times)
    if latency is None:
        raise RuntimeError(f"no batch of {batch} was timed")
    total = sum(times)
    return RawResult(
        batch=batch,
        images=len(times) * batch,
        seconds=round(total, 3),
        images_per_s=round(len(times) * batch / total, 2),
        batch_latency_ms=latency,
    )


def alternate_raw(
    engines: dict[str, Engine], canvases: np.ndarray, plan: PrecisionsPlan, thresholds: tuple[float, float], device: str
) -> dict[str, list[RawResult]]:
    """Each engine at each batch size: round by round, every engine runs the same batches, in an order that rotates."""
    results: dict[str, list[RawResult]] = {name: [] for name in engines}
    names = list(engines)
    for batch in [b for b in plan.batches if b <= min(engine.max_batch for engine in engines.values())]:
        runs = math.ceil(plan.images_per_round / batch)
        inputs = [canvases[np.arange(k * batch, (k + 1) * batch) % len(canvases)] for k in range(plan.rounds * runs)]
        for engine in engines.values():
            engine.run(inputs[0], *thresholds)  # a new input shape: first-run allocations
        times: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(plan.rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                for batch_inputs in inputs[round_ * runs : (round_ + 1) * runs]:
                    started = time.perf_counter()
                    engines[name].run(batch_inputs, *thresholds)
                    times[name].append(time.perf_counter() - started)
        for name in names:
            results[name].append(_raw_result(batch, times[name]))
        progress(
            f"[{device}] precisions, raw graph at batch {batch}: " + ", ".join(f"{n} {r[-1].images_per_s}" for n, r in results.items())
        )
    return results


def eval_set(plan: PrecisionsPlan, cache: Path) -> CocoDataset:
    """The held-out scenes, generated once into ``cache`` (as ``python -m model_export synth --seed 13`` would) and reused."""
    from model_export.synth import write_dataset

    directory = cache / f"synth-seed{plan.eval_seed}-{plan.eval_images}"
    if not (directory / ANNOTATIONS_FILE).is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:  # written whole, then renamed: no half set is ever reused
            write_dataset(Path(scratch) / "set", SynthConfig(count=plan.eval_images, seed=plan.eval_seed))
            (Path(scratch) / "set").rename(directory)
    return load_dataset(directory)


def engine_predictor(engine: Engine, iou_threshold: float) -> BatchPredictor:
    """The engine as ``model_export.evaluate`` calls a model: canvases in, each one's detections out."""

    def predict(canvases: np.ndarray) -> list[Detections]:
        return engine.run(canvases, EVAL_SCORE_THRESHOLD, iou_threshold).per_image()

    return predict


def _accuracy(report: EvalReport) -> Accuracy:
    return Accuracy(map=round(report.map, 4), map50=round(report.map50, 4), detections=report.detections)


def eager_accuracy(checkpoint: Path, dataset: CocoDataset, manifest: ModelManifest) -> Accuracy:
    """The checkpoint the package came from, in torch, on the package's canvas (torch is imported here only)."""
    from model_export.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint, canvas=manifest.canvas)
    return _accuracy(evaluate(eager_predictor(loaded.model), dataset, loaded.canvas, EVAL_BATCH, loaded.categories))


def measure_service(
    config: BenchConfig, manifest: ModelManifest, images: ImageSet, device: str, configuration: Configuration
) -> SystemResult:
    """``python -m service`` with the configuration's DETECTOR_* variables (auto: none), the systems section's way."""
    env = {
        key: value for key, value in service_env(config, device, effective_batch(config, manifest)).items() if key not in ENGINE_SETTINGS
    }
    spec = service_spec(env | configuration.env, configuration.name, configuration.label, info_path=f"/v1/models/{manifest.name}")
    result = measure_system(config, spec, images.directory, device)
    result.runtime = result.runtime.get("runtime", result.runtime)  # the engine and batching, not the whole manifest again
    return result


def measure_engines(
    rows: dict[str, PrecisionRow],
    engines: dict[str, Engine],
    manifest: ModelManifest,
    images: ImageSet,
    plan: PrecisionsPlan,
    device: str,
    dataset: CocoDataset | None,
) -> None:
    """Fills in each engine's raw figures (all of them alternating), then its mAP on ``dataset`` (None: no mAP)."""
    if not engines:
        return
    thresholds = (manifest.score_threshold, manifest.iou_threshold)
    for name, raw in alternate_raw(engines, raw_engine.canvases(images.bodies, manifest.canvas), plan, thresholds, device).items():
        rows[name].raw = raw
    if dataset is None:
        return
    for name, engine in engines.items():
        found = _accuracy(evaluate(engine_predictor(engine, manifest.iou_threshold), dataset, manifest.canvas, EVAL_BATCH))
        rows[name].accuracy = found
        progress(f"[{device}] {rows[name].label}: mAP@[.5:.95] {found.map}, mAP@.5 {found.map50}")


def measure(config: BenchConfig, manifest: ModelManifest, images: ImageSet, device: str, run: Run) -> PrecisionsSection:
    plan = config.precisions
    wanted = configurations(device, config.cache, with_auto=device == config.devices[-1])
    wanted = [c for c in wanted if c.name in plan.configurations] if plan.configurations else wanted
    dataset = eval_set(plan, config.cache)
    unscored = (
        None if manifest.categories[1:] == dataset.categories[1:] else f"the model's classes are not the scenes' {dataset.categories[1:]}"
    )
    # The service with its defaults goes first: the configuration it chose is the raw engine its row measures.
    auto = {c.name: measure_service(config, manifest, images, device, c) for c in wanted if c.name == AUTO}
    built = [build(config, manifest, configuration, device, auto.get(configuration.name)) for configuration in wanted]
    rows = {row.name: row for row, _ in built}
    engines = {row.name: engine for row, engine in built if engine is not None}
    measure_engines(rows, engines, manifest, images, plan, device, dataset if unscored is None else None)
    del built, engines  # their threads and memory go before the servers start
    gc.collect()
    for configuration in wanted:
        if rows[configuration.name].skipped is None and configuration.name not in auto:
            rows[configuration.name].service = measure_service(config, manifest, images, device, configuration)
    eager = eager_accuracy(config.checkpoint, dataset, manifest) if unscored is None else None
    progress(f"[{device}] eager checkpoint: " + (f"mAP@[.5:.95] {eager.map}, mAP@.5 {eager.map50}" if eager else f"no mAP: {unscored}"))
    section = PrecisionsSection(
        run=run,
        baseline=BASELINE,
        ratio_clients=GOAL_CLIENTS if GOAL_CLIENTS in config.plan.clients else max(config.plan.clients),
        rounds=plan.rounds,
        eval_set=EvalSet(seed=plan.eval_seed, images=len(dataset.images), score_threshold=EVAL_SCORE_THRESHOLD, unscored=unscored),
        eager=eager,
        rows=list(rows.values()),
    )
    add_ratios(section)
    section.goals = accuracy_goals(section, plan.map_tolerance)
    return section


def add_ratios(section: PrecisionsSection) -> None:
    """Each row's service images/s and raw batch-1 latency over the baseline's."""
    base = section.row(section.baseline)
    if base is None:
        return
    base_raw = base.raw_at(1)
    for row in section.rows:
        row.throughput_ratio = _divide(row.images_per_s(section.ratio_clients), base.images_per_s(section.ratio_clients))
        raw = row.raw_at(1)
        row.latency_ratio = _divide(raw.batch_latency_ms.p50, base_raw.batch_latency_ms.p50) if raw and base_raw else None


def accuracy_goals(section: PrecisionsSection, tolerance: float) -> list[Goal]:
    """Each configuration's mAP@[.5:.95] within ``tolerance`` of the eager checkpoint's, on the same scenes."""
    goals = []
    for row in section.rows:
        if row.skipped is not None:
            continue
        goal = f"{row.label}: mAP@[.5:.95] within {tolerance:g} of the eager checkpoint's"
        if row.accuracy is None or section.eager is None:
            goals.append(Goal(goal=goal, measured="not measured", met=None))
            continue
        difference = row.accuracy.map - section.eager.map
        measured = f"{row.accuracy.map:.4f} against {section.eager.map:.4f} ({difference:+.4f})"
        goals.append(Goal(goal=goal, measured=measured, met=abs(difference) <= tolerance + 1e-9))
    return goals
