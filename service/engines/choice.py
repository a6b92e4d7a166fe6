"""DETECTOR_ENGINE=auto and DETECTOR_PRECISION=auto: the fastest configuration that keeps the model's accuracy here.

The candidates come fastest first, by what was measured (issue 16, the default package on 2 cores, time per image
against ONNX Runtime f32 at batch 1 / 8): on an AMD EPYC with AVX512-VNNI and AVX512-BF16, OpenVINO int8 0.54 / 0.44,
OpenVINO bf16 0.62 / 0.51, ONNX Runtime int8 0.65 / 0.62, OpenVINO f32 1.04 / 0.96. On an AMD EPYC with AVX2 alone,
ONNX Runtime int8 was 1.2x slower than f32 and OpenVINO int8 about as fast at batch 1, 0.8x at batch 8. So:

* ONNX Runtime offers a GPU provider (TensorRT, CUDA): the float graph on it, nothing to try.
* On the CPU, where the package has an int8 graph: OpenVINO int8 (on any CPU: the probe decides), then OpenVINO
  bf16 where the CPU has AVX512-BF16 or AMX, then ONNX Runtime int8 where it has VNNI or AMX; ONNX Runtime f32 last,
  always.

A reduced candidate is served only if it passes, on this machine, on the package's probe images (validation canvases
written by the int8 export): it must find again at least ``min_recall`` of the float graph's detections (the export
gate's measure and threshold), and run faster than the float graph in ONNX Runtime by ``SPEED_MARGIN``. Each trial
is reported in /v1/models (``runtime.choice``) and logged at start. A setting that names a precision forces it.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from service.agreement import Detections, found_again
from service.cpu import cpu_has_bf16, cpu_has_vnni
from service.engines.base import BatchOutput, Engine, Precision
from service.manifest import ModelManifest, PackageError

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)

EngineName = Literal["onnxruntime", "openvino", "tensorrt"]
Outcome = Literal["chosen", "less accurate", "not faster", "failed"]
# A reduced precision must take at most this share of the float graph's time on the probe: start-up timings are noisy.
SPEED_MARGIN = 0.9
DEFAULT_MIN_RECALL = 0.95  # the export gate's default, for a precision the package holds no gate figures of (bf16)
MATCH_SCORE, MATCH_IOU = 0.5, 0.5
PROBE_BATCH = 8
PROBE_ROUNDS = 2


@dataclass(frozen=True)
class Configuration:
    engine: EngineName
    precision: Precision | Literal["auto"]  # auto: TensorRT's most reduced engine built

    def __str__(self) -> str:
        return f"{self.engine} {self.precision}"


@dataclass(frozen=True)
class Machine:
    """What the choice depends on; ``here`` reads it, tests give their own."""

    gpu: bool  # ONNX Runtime starts a GPU provider (TensorRT, CUDA) with these settings
    vnni: bool
    bf16: bool
    openvino: bool

    @classmethod
    def here(cls, settings: Settings) -> Machine:
        import onnxruntime

        from service.engines.onnxruntime import choose_providers, uses_gpu

        providers = choose_providers(settings.provider_list, onnxruntime.get_available_providers())
        return cls(
            gpu=uses_gpu(providers),
            vnni=bool(cpu_has_vnni()),
            bf16=bool(cpu_has_bf16()),
            openvino=importlib.util.find_spec("openvino") is not None,
        )


class Trial(BaseModel):
    """One candidate tried on the probe images against the float graph in ONNX Runtime."""

    engine: str
    precision: str
    outcome: Outcome
    recall: float | None = Field(default=None, description="share of the float graph's detections (score >= 0.5) found again")
    ms_per_image: float | None = None
    float_ms_per_image: float | None = None
    detail: str = ""


class EngineChoice(BaseModel):
    """How the engine and precision serving the model were chosen: by the settings, or by trying candidates here."""

    model_config = ConfigDict(frozen=True)

    by: Literal["settings", "auto"]
    engine: str
    precision: str
    reason: str
    trials: list[Trial] = Field(default_factory=list)


Build = Callable[["Settings", ModelManifest], Engine]


def forced(settings: Settings, machine: Machine) -> Configuration | None:
    """The configuration the settings name outright; None when the precision is left to auto."""
    engine, precision = settings.engine, settings.precision
    if precision == "auto":
        return Configuration("tensorrt", "auto") if engine == "tensorrt" else None
    if engine != "auto":
        return Configuration(engine, precision)
    if precision == "bf16" or (precision == "int8" and machine.vnni and machine.openvino):
        return Configuration("openvino", precision)
    return Configuration("onnxruntime", precision)


def candidates(settings: Settings, manifest: ModelManifest, machine: Machine) -> list[Configuration]:
    """The configurations worth trying here, fastest first; the last is the float graph, which is served if none passes."""
    engine = settings.engine
    fallback = Configuration("openvino" if engine == "openvino" else "onnxruntime", "f32")
    if machine.gpu and engine != "openvino":
        return [fallback]
    openvino = machine.openvino and engine in ("auto", "openvino")
    onnxruntime = engine in ("auto", "onnxruntime")
    int8 = "int8" in manifest.precisions
    reduced = [
        Configuration("openvino", "int8") if openvino and int8 else None,
        Configuration("openvino", "bf16") if openvino and machine.bf16 else None,
        Configuration("onnxruntime", "int8") if onnxruntime and int8 and machine.vnni else None,
    ]
    return [*(c for c in reduced if c is not None), fallback]


def configure(settings: Settings, configuration: Configuration) -> Settings:
    return settings.model_copy(update={"engine": configuration.engine, "precision": configuration.precision})


def choose_engine(settings: Settings, manifest: ModelManifest, build: Build, machine: Machine | None = None) -> tuple[Engine, EngineChoice]:
    """The engine to serve with, built, and how it was chosen."""
    machine = machine or Machine.here(settings)
    configuration = forced(settings, machine)
    if configuration is not None:
        reason = f"DETECTOR_ENGINE={settings.engine}, DETECTOR_PRECISION={settings.precision}"
        return build(configure(settings, configuration), manifest), _choice("settings", configuration, reason)
    *reduced, fallback = candidates(settings, manifest, machine)
    if not reduced:
        why = "a GPU provider runs the float graph" if machine.gpu else _nothing_to_try(settings, manifest, machine)
        return build(configure(settings, fallback), manifest), _choice("auto", fallback, why)
    probe = read_probe(settings.model_dir, manifest)
    if probe is None:
        why = f"the package has no probe images to check {', '.join(map(str, reduced))} on this machine (the int8 export writes them)"
        return build(configure(settings, fallback), manifest), _choice("auto", fallback, why)
    return _try_candidates(settings, manifest, build, reduced, fallback, probe)


def _try_candidates(
    settings: Settings, manifest: ModelManifest, build: Build, reduced: list[Configuration], fallback: Configuration, probe: np.ndarray
) -> tuple[Engine, EngineChoice]:
    reference = build(configure(settings, Configuration("onnxruntime", "f32")), manifest)
    trials: list[Trial] = []
    for configuration in reduced:
        engine, trial = _trial(settings, manifest, build, configuration, probe, reference)
        trials.append(trial)
        if engine is not None:
            reason = (
                f"{configuration} found again {trial.recall:.1%} of the float graph's detections and took {trial.ms_per_image:.1f} ms "
                f"per image against the float graph's {trial.float_ms_per_image:.1f} in onnxruntime, on {len(probe)} probe images"
            )
            return engine, _choice("auto", configuration, reason, trials)
    engine = reference if fallback == Configuration("onnxruntime", "f32") else build(configure(settings, fallback), manifest)
    return engine, _choice(
        "auto", fallback, "no reduced precision passed on this machine: " + "; ".join(_summary(t) for t in trials), trials
    )


def _trial(
    settings: Settings, manifest: ModelManifest, build: Build, configuration: Configuration, probe: np.ndarray, reference: Engine
) -> tuple[Engine | None, Trial]:
    """The candidate's engine if it passes (else None), and the trial's figures."""
    trial = Trial(engine=configuration.engine, precision=configuration.precision, outcome="failed")
    try:
        engine = build(configure(settings, configuration), manifest)
        (float_outputs, float_ms), (outputs, ms) = run_probe([reference, engine], probe, manifest.iou_threshold)
    except Exception as error:  # any engine's own failure to build or run: this candidate is out, the next is tried
        log.warning("candidate failed", extra={"configuration": str(configuration), "error": str(error)})
        return None, trial.model_copy(update={"detail": str(error)})
    recall, _ = found_again(_per_image(float_outputs), _per_image(outputs), MATCH_SCORE, MATCH_IOU)
    trial = trial.model_copy(update={"recall": round(recall, 4), "ms_per_image": round(ms, 2), "float_ms_per_image": round(float_ms, 2)})
    needed = min_recall(manifest, configuration)
    if recall < needed:
        return None, trial.model_copy(update={"outcome": "less accurate", "detail": f"recall {recall:.2%} < {needed:.0%}"})
    if ms > SPEED_MARGIN * float_ms:
        return None, trial.model_copy(update={"outcome": "not faster", "detail": f"{ms:.1f} ms > {SPEED_MARGIN:g} x {float_ms:.1f} ms"})
    return engine, trial.model_copy(update={"outcome": "chosen"})


def min_recall(manifest: ModelManifest, configuration: Configuration) -> float:
    """The export gate's threshold for this precision's graph; the default for one it has no gate of (bf16)."""
    gates = [graph.accuracy.min_recall for graph in manifest.graphs if graph.precision == configuration.precision]
    return gates[0] if gates else DEFAULT_MIN_RECALL


def run_probe(engines: Sequence[Engine], probe: np.ndarray, iou_threshold: float) -> list[tuple[list[BatchOutput], float]]:
    """Each engine's (outputs of each batch, ms per image) on the probe: one warm-up batch each, then ``PROBE_ROUNDS``
    passes over the probe, the engines alternating so that the machine's noise hits all alike; the fastest pass counts."""
    batch = min(PROBE_BATCH, *(engine.max_batch for engine in engines))
    batches = [probe[start : start + batch] for start in range(0, len(probe), batch)]
    for engine in engines:
        engine.run(batches[0], MATCH_SCORE, iou_threshold)
    outputs: list[list[BatchOutput]] = [[] for _ in engines]
    seconds = [float("inf")] * len(engines)
    for _ in range(PROBE_ROUNDS):
        for index, engine in enumerate(engines):
            started = time.perf_counter()
            outputs[index] = [engine.run(images, MATCH_SCORE, iou_threshold) for images in batches]
            seconds[index] = min(seconds[index], time.perf_counter() - started)
    return [(found, 1000 * took / len(probe)) for found, took in zip(outputs, seconds, strict=True)]


def read_probe(package: Path, manifest: ModelManifest) -> np.ndarray | None:
    """The package's probe canvases (ndarray[N, H, W, 3] uint8); None when it lists none."""
    if not manifest.probe_images:
        return None
    canvases = []
    for name in manifest.probe_images:
        path = Path(package) / name
        try:
            with Image.open(path) as image:
                canvas = np.asarray(image.convert("RGB"))
        except OSError as error:
            raise PackageError(f"{path}: the manifest lists this probe image, but it cannot be read: {error}") from error
        if canvas.shape[:2] != tuple(manifest.canvas):
            raise PackageError(f"{path}: a probe image must be canvas-sized {list(manifest.canvas)}, it is {list(canvas.shape[:2])}")
        canvases.append(canvas)
    return np.stack(canvases)


def _choice(by: Literal["settings", "auto"], configuration: Configuration, reason: str, trials: list[Trial] | None = None) -> EngineChoice:
    return EngineChoice(by=by, engine=configuration.engine, precision=configuration.precision, reason=reason, trials=trials or [])


def _nothing_to_try(settings: Settings, manifest: ModelManifest, machine: Machine) -> str:
    return (
        f"nothing reduced to try here: the package has {', '.join(manifest.precisions)} graphs, OpenVINO is "
        f"{'installed' if machine.openvino else 'not installed'}, the CPU has {'no ' if not machine.bf16 else ''}bf16, "
        f"DETECTOR_ENGINE={settings.engine}"
    )


def _per_image(batches: list[BatchOutput]) -> list[Detections]:
    return [found for batch in batches for found in batch.per_image()]


def _summary(trial: Trial) -> str:
    return f"{trial.engine} {trial.precision} {trial.outcome} ({trial.detail})"
