"""The int8 graph: the package's float graph quantized by ONNX Runtime's ``quantize_static`` into a Q/DQ graph.

What is quantized, and why:

* QDQ format (QuantizeLinear/DequantizeLinear around float ops), never ONNX Runtime's QOperator format:
  OpenVINO refuses its per-channel QLinearConv, TensorRT parses no QLinear* op; both read Q/DQ graphs.
* Only Conv, Gemm and MatMul (with a constant B) read int8: the layers with weights, nearly all of the
  arithmetic. The first Conv, which reads the normalised image, stays float: quantizing it cost accuracy.
  The RPN's decoding, TopK, NonMaxSuppression, RoiAlign, the softmax and the box decoding stay float and
  read float tensors (below).
* Weights: int8, per output channel, symmetric; ``reduce_range`` off (it buys nothing on a VNNI CPU and costs
  accuracy). Activations: int8, symmetric (zero point 0), as TensorRT requires; biases stay float (TensorRT's
  parser refuses a DequantizeLinear of int32, which is how ONNX Runtime quantizes a bias).
* Activation ranges: the 99.999th percentile of |x| over the calibration images. Symmetric int8 with the
  plain min/max range cost the default model 0.004 mAP (its ReLU outputs use half the int8 range); the
  percentile range cost nothing measurable.
* Q/DQ only at the inputs of the quantized layers, a dedicated pair per layer (TensorRT's placement): a
  layer's output is quantized only as the input of the next one.

ONNX Runtime's quantizer leaves float ops reading int8-rounded tensors; ``model_export.qdq_graph`` gives
them the float tensors back and checks the graph.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from PIL import Image

from model_export.accuracy_gate import check_gate, measure_accuracy
from model_export.calibration import ImageSet
from model_export.command_errors import PrecisionError
from model_export.config import QuantizeConfig
from model_export.qdq_graph import QUANTIZED_OPS, first_conv, float_readers_read_float, qdq_problems
from service.manifest import MANIFEST_FILE, GraphFile, ModelManifest, read_manifest, sha256_of, verify_graph_file

INT8_GRAPH_FILE = "model.int8.onnx"
PROBE_DIR = "probe"  # the probe images' folder in the package
Progress = Callable[[str], None]


def add_int8_graph(
    package: Path, calibration: ImageSet, val: ImageSet | None, config: QuantizeConfig, progress: Progress = print
) -> GraphFile:
    """Quantizes the package's float graph -> measures it against the float graph -> writes it beside it if it passes the gate.

    Without ``val`` the last part of ``calibration`` is held out for the gate (``QuantizeConfig.val_fraction``). The int8
    graph is staged in the package and moved in with its manifest entry (replacing an older int8 graph's) only after
    the gate; a graph that misses it is not written (AccuracyGateError, with the figures), and the package is left as it was.
    """
    package = Path(package)
    manifest = read_manifest(package)
    float_path = verify_graph_file(package, manifest, "fp32")
    if val is None:
        calibration, val = calibration.split(config.val_fraction, config.min_val_images)
    val.check_classes(manifest.categories)
    calibration = calibration.spread(config.max_calibration_images)
    staging = Path(tempfile.mkdtemp(prefix=".int8.partial-", dir=package))
    try:
        candidate = staging / INT8_GRAPH_FILE
        progress(f"calibrating and quantizing on {len(calibration)} images of {calibration.root}")
        made = quantize_graph(float_path, candidate, calibration, manifest, config)
        # The gate runs the candidate as a package of its own, manifest included, as the service will run it.
        manifest.model_copy(update={"onnx_file": candidate.name, "onnx_sha256": sha256_of(candidate), "graphs": []}).write(staging)
        progress(f"measuring the int8 graph against the float graph on {len(val)} images of {val.root}")
        gate = measure_accuracy(package, staging, val, config)
        check_gate(gate, "int8", package)
        entry = GraphFile(file=INT8_GRAPH_FILE, precision="int8", sha256=sha256_of(candidate), accuracy=gate, quantization=made)
        graphs = [graph for graph in manifest.graphs if graph.precision != "int8"] + [entry]
        probe = write_probe_images(staging / PROBE_DIR, val.spread(config.probe_images), manifest.canvas)
        manifest.model_copy(update={"graphs": graphs, "probe_images": [f"{PROBE_DIR}/{name}" for name in probe]}).write(staging)
        candidate.replace(package / INT8_GRAPH_FILE)
        shutil.rmtree(package / PROBE_DIR, ignore_errors=True)
        (staging / PROBE_DIR).replace(package / PROBE_DIR)
        (staging / MANIFEST_FILE).replace(package / MANIFEST_FILE)
        return entry
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_probe_images(folder: Path, images: ImageSet, canvas: tuple[int, int]) -> list[str]:
    """The images letterboxed onto the canvas, as JPEGs (both sides of the service's check read the same decoded pixels)."""
    folder.mkdir()
    names = []
    for index in range(len(images)):
        names.append(f"{index:03d}.jpg")
        Image.fromarray(images.canvas(index, canvas)).save(folder / names[-1], quality=95)
    return names


class _Canvases(CalibrationDataReader):
    """ONNX Runtime's CalibrationDataReader over an image set: one batch of canvases per read, the graph's own inputs.

    Calibration runs one pass per batch (``set_range``), so that only one batch's tensors are held in memory.
    """

    def __init__(self, images: ImageSet, manifest: ModelManifest, batch: int) -> None:
        self.images, self.manifest = images, manifest
        self.starts = list(range(0, len(images), batch))
        self.batch = batch
        self.position, self.stop = 0, len(self.starts)

    def __len__(self) -> int:
        return len(self.starts)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.position, self.stop = start_index, min(end_index, len(self.starts))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.position >= self.stop:
            return None
        start = self.starts[self.position]
        self.position += 1
        indices = range(start, min(start + self.batch, len(self.images)))
        return {
            "images": np.stack([self.images.canvas(i, self.manifest.canvas) for i in indices]),
            "score_threshold": np.array(self.manifest.score_threshold, dtype=np.float32),
            "iou_threshold": np.array(self.manifest.iou_threshold, dtype=np.float32),
        }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences quantize_static's prints and its advice to pre-process (logged at WARNING on the root logger)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def quantize_graph(float_path: Path, out: Path, images: ImageSet, manifest: ModelManifest, config: QuantizeConfig) -> dict[str, Any]:
    """Writes the int8 Q/DQ graph of ``float_path`` to ``out``, calibrated on ``images``; returns how it was made."""
    model = onnx.load(str(float_path))
    kept_float = first_conv(model)
    if not kept_float.name:
        raise PrecisionError(f"{float_path}: the first Conv has no name, so it cannot be kept in float")
    batch = min(config.calibration_batch, manifest.max_batch)
    options = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "DedicatedQDQPair": True,
        "MatMulConstBOnly": True,
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
        "CalibPercentile": config.percentile,
        "CalibStridedMinMax": 1,  # one calibration pass per read, i.e. per batch (any method, despite the name)
    }
    with _quiet():
        quantize_static(
            model,
            str(out),
            _Canvases(images, manifest, batch),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=[kept_float.name],
            calibrate_method=CalibrationMethod.Percentile,
            extra_options=options,
        )
    quantized = onnx.load(str(out))
    float_readers_read_float(quantized.graph)
    onnx.checker.check_model(quantized, full_check=True)
    problems = qdq_problems(quantized)
    if problems:
        raise PrecisionError(f"{out}: the int8 graph is not what was asked for:\n  " + "\n  ".join(problems))
    onnx.save(quantized, str(out))
    return {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "ops": list(QUANTIZED_OPS),
        "float_nodes": [kept_float.name],
        "weights": "int8 symmetric per channel",
        "activations": f"int8 symmetric, percentile {config.percentile}",
        "calibration_images": len(images),
    }
