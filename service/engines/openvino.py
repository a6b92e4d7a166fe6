"""OpenVINO engine: the package's graph on the CPU in f32, bf16 or int8 (``pip install -e '.[openvino]'``).

The inference precision is always set (INFERENCE_PRECISION_HINT), never left to
OpenVINO: its default on a CPU with bf16 (AVX-512 BF16, AMX) is bf16, which
would silently break parity with the export.

- f32: the float graph, hint f32.
- bf16: the float graph, hint bf16. A CPU without bf16 takes that hint and runs
  f32, so the service would report a precision it does not run: refused at start.
- int8: the package's int8 graph, in Q/DQ form (OpenVINO refuses ONNX Runtime's
  QOperator graphs). OpenVINO runs each quantized Conv and MatMul in int8; the
  hint f32 keeps every other operator (normalisation, box decoding, RoiAlign,
  NMS) in f32. On a CPU without VNNI (AVX2 only) int8 is no faster than f32, and
  OpenVINO's int8 convolutions there saturate on full-range 8-bit weights (its
  kernels sum pairs of u8 x s8 products in 16 bits; 7-bit weights do not
  saturate): measured 14% error on a convolution with weights in -127..127,
  none with -63..63. The engine runs it, with a warning at start.

The graph is compiled once for the batch range [1, max_batch]: a bounded
dynamic batch, no padding. An image's detections do not depend on its batch
(DESIGN.md): measured bitwise on an AMD EPYC (AVX2) with OpenVINO 2026.4.1, at
f32 and int8, for every batch size up to max_batch in any order, with the
LATENCY and THROUGHPUT hints and 1 to 8 threads. Padding every batch to a static
max_batch (what the TensorRT engine does below its profile's min) would cost a
lone image max_batch times its work, so it is not done; tests/service/test_openvino.py
checks the guarantee at every precision on the CPU that runs the suite.

One infer request, reused: the batcher calls the engine from one thread, one
batch at a time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import openvino as ov

from service.cpu import cpu_has_vnni
from service.engines.base import GRAPH_OF, BatchOutput, EngineInfo, Precision
from service.manifest import GraphPort, ModelManifest, PackageError, check_ports

log = logging.getLogger(__name__)

DEVICE = "CPU"
OUTPUTS = ("num_detections", "boxes", "scores", "labels")
INFERENCE_PRECISION: dict[Precision, str] = {"f32": "f32", "bf16": "bf16", "int8": "f32"}
# The precision the service reports (EngineInfo.precision): the other engines' names.
REPORTED: dict[Precision, str] = {"f32": "fp32", "bf16": "bf16", "int8": "int8"}
PerformanceHint = Literal["LATENCY", "THROUGHPUT"]


class UnsupportedPrecision(RuntimeError):
    """The CPU cannot run the precision asked for; the message names the capability it lacks."""


def check_capabilities(precision: Precision, capabilities: list[str], cpu: str) -> None:
    """bf16 needs the CPU's BF16 capability: without it OpenVINO would run f32 and say nothing."""
    if precision == "bf16" and "BF16" not in capabilities:
        raise UnsupportedPrecision(
            f"DETECTOR_PRECISION=bf16: this CPU ({cpu}) has no bf16 support (OpenVINO's OPTIMIZATION_CAPABILITIES are "
            f"{', '.join(capabilities)}, without BF16), so OpenVINO would run f32 instead; use f32 or int8"
        )


def _ports(ports: list[ov.Output]) -> dict[str, GraphPort]:
    """OpenVINO's ports by each of their names: element type and shape (None for a dynamic dimension)."""
    return {
        name: (str(port.get_element_type().to_dtype()), [dim.get_length() if dim.is_static else None for dim in port.get_partial_shape()])
        for port in ports
        for name in port.get_names()
    }


def read_graph(core: ov.Core, path: Path, manifest: ModelManifest) -> ov.Model:
    """The package's graph, checked against the manifest, its batch bounded to [1, max_batch]."""
    try:
        model = core.read_model(str(path))
    except RuntimeError as error:  # OpenVINO's ONNX frontend raises RuntimeError for any file it cannot convert
        raise PackageError(f"{path}: OpenVINO cannot read this graph (an int8 graph must be Q/DQ, not QOperator): {error}") from error
    check_ports(path, "input", manifest.inputs, _ports(model.inputs))
    check_ports(path, "output", manifest.outputs, _ports(model.outputs))
    images = model.input("images").get_partial_shape()
    images[0] = ov.Dimension(1, manifest.max_batch)
    model.reshape({"images": images})
    return model


def compile_graph(core: ov.Core, model: ov.Model, hint: str, threads: int, performance_hint: PerformanceHint) -> ov.CompiledModel:
    """The model compiled for the CPU with the inference precision ``hint`` set, and checked to be the one it runs."""
    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": performance_hint, "INFERENCE_NUM_THREADS": threads}
    compiled = core.compile_model(model, DEVICE, config)
    # Read back: a hint OpenVINO cannot honour is dropped without a word.
    compiled_hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if compiled_hint != hint:
        raise UnsupportedPrecision(f"OpenVINO compiled the graph for {compiled_hint}, not the {hint} asked for")
    return compiled


class OpenVinoEngine:
    def __init__(
        self,
        package: Path,
        manifest: ModelManifest,
        precision: Precision = "f32",
        threads: int = 0,
        performance_hint: PerformanceHint = "LATENCY",
    ) -> None:
        """``threads`` 0 lets OpenVINO choose (every core). ``performance_hint`` LATENCY suits one request at a time."""
        self.manifest = manifest
        self.max_batch = manifest.max_batch
        self.precision = precision
        core = ov.Core()
        self.cpu = str(core.get_property(DEVICE, "FULL_DEVICE_NAME"))
        check_capabilities(precision, [str(c) for c in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")], self.cpu)
        self.graph_file, _ = manifest.graph_file(GRAPH_OF[precision])
        if precision == "int8" and cpu_has_vnni() is False:
            log.warning(
                "int8 on a CPU without VNNI: OpenVINO's int8 convolutions may saturate on 8-bit weights here "
                "(DETECTOR_PRECISION=auto checks the detections on the package's probe images before it serves int8)",
                extra={"cpu": self.cpu},
            )
        model = read_graph(core, Path(package) / self.graph_file, manifest)
        self.compiled = compile_graph(core, model, INFERENCE_PRECISION[precision], threads, performance_hint)
        self.hint = INFERENCE_PRECISION[precision]
        self.performance_hint = performance_hint
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.request = self.compiled.create_infer_request()
        self.outputs = [self.compiled.output(name) for name in OUTPUTS]
        log.info("openvino model compiled", extra={"precision": precision, "threads": self.threads, "cpu": self.cpu})

    def run(self, images: np.ndarray, score_threshold: float, iou_threshold: float) -> BatchOutput:
        if not 1 <= len(images) <= self.max_batch:
            raise ValueError(f"a batch of {len(images)} is outside the compiled range 1..{self.max_batch}")
        feed = {
            "images": np.ascontiguousarray(images, dtype=np.uint8),
            "score_threshold": np.array(score_threshold, dtype=np.float32),
            "iou_threshold": np.array(iou_threshold, dtype=np.float32),
        }
        # share_inputs: the call is synchronous, the arrays outlive it; the outputs are copies (the request reuses its tensors).
        result = self.request.infer(feed, share_inputs=True)
        counts, boxes, scores, labels = (np.array(result[port]) for port in self.outputs)
        return BatchOutput(counts.astype(np.int64), boxes, scores, labels.astype(np.int64))

    def describe(self) -> EngineInfo:
        return EngineInfo(
            engine="openvino",
            provider=DEVICE,
            device="cpu",
            precision=REPORTED[self.precision],
            version=ov.__version__.split("-")[0],
            details={
                "cpu": self.cpu,
                "threads": self.threads,
                "inference_precision_hint": self.hint,
                "performance_hint": self.performance_hint,
                "graph_file": self.graph_file,
                "batch": [1, self.max_batch],
            },
        )
