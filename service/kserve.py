"""The KServe v2 / Open Inference Protocol for this detector: request parsing, response encoding, metadata.

The model speaks the protocol as one input and four outputs:

* input ``images``: BYTES, shape [N] (or [N, 1], Triton's per-item shape), one
  encoded image (JPEG, PNG, ...) per element. In binary data (the binary
  tensor extension) each element is a 4-byte little-endian length and the
  image's bytes; in JSON data each element is the image's base64 text (an
  encoded image is never valid UTF-8, so it cannot travel as a JSON string).
* outputs, DESIGN.md's graph outputs per image, in the uploaded image's pixels:
  ``num_detections`` INT64 [N], ``boxes`` FP32 [N, M, 4] (x1, y1, x2, y2),
  ``scores`` FP32 [N, M] (descending), ``labels`` INT64 [N, M] (an index into
  the categories), where M is the request's largest count; rows past an
  image's count are zeros.

Request ``parameters``: ``score_threshold``, ``iou_threshold`` (0..1),
``max_detections`` (1..K), ``classes`` (names to keep, a list or a
comma-separated string), Triton's ``timeout`` (microseconds) and
``binary_data_output``; others are ignored, as Triton does.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.detector import DetectParams
from service.errors import BodyTooLarge, ServiceError
from service.manifest import ModelManifest
from service.schemas import DetectResponse

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT = "images"
# name -> (datatype, shape in the model metadata, Triton config dims); -1: variable
OUTPUTS: dict[str, tuple[str, list[int], list[int]]] = {
    "num_detections": ("INT64", [-1], [1]),
    "boxes": ("FP32", [-1, -1, 4], [-1, 4]),
    "scores": ("FP32", [-1, -1], [-1]),
    "labels": ("INT64", [-1, -1], [-1]),
}
EXTENSIONS = ["binary_tensor_data", "model_configuration", "parameters"]
_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
_LENGTH = struct.Struct("<I")


class ProtocolError(ServiceError):
    """A request that breaks the protocol or this model's signature (the protocol answers 400)."""

    status, title, type = 400, "Bad Request", "/problems/bad-request"


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A parsed infer request: the encoded images, the request's parameters and the outputs to return, in order."""

    id: str | None
    images: list[bytes]
    parameters: dict[str, Any]
    outputs: list[RequestedOutput]


# Request side


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before its Content-Encoding (gzip or deflate, as tritonclient compresses), within ``limit`` bytes."""
    if not encoding or encoding.lower() == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.lower())
    if wbits is None:
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise ProtocolError(f"the {encoding} body does not decompress: {error}") from error
    if len(data) > limit:
        raise BodyTooLarge(f"the decompressed body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise ProtocolError(f"the {encoding} body is truncated")
    return data


def parse_infer_request(body: bytes, header_length: str | None, max_batch: int) -> InferRequest:
    """Splits the JSON header from the binary data (binary tensor extension) and reads the images."""
    header, binary = _split(body, header_length)
    request = _json_object(header)
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' should be an object")
    images = _read_images(_the_input(request.get("inputs")), binary)
    if len(images) > max_batch:
        raise ProtocolError(f"the request holds {len(images)} images; this model's max_batch_size is {max_batch}")
    default_binary = _flag(parameters, "binary_data_output")
    request_id = request.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        images=images,
        parameters=parameters,
        outputs=_requested_outputs(request.get("outputs"), default_binary),
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} should be a byte count within the body's {len(body)} bytes")
    return body[: int(header_length)], body[int(header_length) :]


def _json_object(header: bytes) -> dict[str, Any]:
    try:
        request = json.loads(header)
    except (UnicodeDecodeError, ValueError) as error:
        raise ProtocolError(f"the request header is not JSON: {error} (binary data needs {HEADER_LENGTH})") from error
    if not isinstance(request, dict):
        raise ProtocolError("the request should be a JSON object")
    return request


def _the_input(inputs: object) -> dict[str, Any]:
    if not isinstance(inputs, list) or not all(isinstance(tensor, dict) for tensor in inputs):
        raise ProtocolError(f"'inputs' should be a list of tensors; this model takes one, {INPUT!r}")
    names = [tensor.get("name") for tensor in inputs]
    if names != [INPUT]:
        missing = "" if INPUT in names else f"missing input {INPUT!r}; "
        raise ProtocolError(f"{missing}the request's inputs are {names}; this model takes exactly one, {INPUT!r} (BYTES, encoded images)")
    tensor: dict[str, Any] = inputs[0]
    return tensor


def _read_images(tensor: dict[str, Any], binary: bytes) -> list[bytes]:
    if tensor.get("datatype") != "BYTES":
        raise ProtocolError(f"input {INPUT!r} has datatype {tensor.get('datatype')!r}; this model takes BYTES (encoded images)")
    count = _batch_of(tensor.get("shape"))
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict) or "shared_memory_region" in parameters:
        raise ProtocolError(f"input {INPUT!r}: shared memory is not supported; send binary or JSON data")
    if "binary_data_size" in parameters:
        images = _binary_elements(binary, parameters["binary_data_size"])
    else:
        if binary:
            raise ProtocolError(f"the body has {len(binary)} bytes after the header, but no input declares binary_data_size")
        images = _json_elements(tensor.get("data"))
    if len(images) != count:
        raise ProtocolError(f"input {INPUT!r} has shape {tensor.get('shape')} but {len(images)} elements of data")
    if not images:
        raise ProtocolError(f"input {INPUT!r} holds no image")
    return images


def _batch_of(shape: object) -> int:
    """The number of images of a shape [N] or [N, 1]."""
    if isinstance(shape, list) and len(shape) in (1, 2) and all(_is_count(d) for d in shape) and shape[1:] in ([], [1]):
        return int(shape[0])
    raise ProtocolError(f"input {INPUT!r} has shape {shape}; this model takes [N] (or [N, 1]): one encoded image per element")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _binary_elements(binary: bytes, size: object) -> list[bytes]:
    """BYTES elements of the binary tensor extension: each a 4-byte little-endian length, then the bytes."""
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise ProtocolError(f"input {INPUT!r} declares binary_data_size {size!r}; the body holds {len(binary)} bytes after the header")
    elements: list[bytes] = []
    offset = 0
    while offset < len(binary):
        if offset + _LENGTH.size > len(binary):
            raise ProtocolError(f"input {INPUT!r}: the binary data ends inside an element's length")
        (length,) = _LENGTH.unpack_from(binary, offset)
        offset += _LENGTH.size
        if offset + length > len(binary):
            raise ProtocolError(f"input {INPUT!r}: element {len(elements)} claims {length} bytes; only {len(binary) - offset} remain")
        elements.append(binary[offset : offset + length])
        offset += length
    return elements


def _json_elements(data: object) -> list[bytes]:
    if not isinstance(data, list):
        raise ProtocolError(f"input {INPUT!r} has no data: send it as binary data or as a JSON list of base64 strings")
    flat = _flatten(data)
    if not all(isinstance(element, str) for element in flat):
        raise ProtocolError(f"input {INPUT!r}: JSON data should be base64 strings, one encoded image each")
    try:
        return [base64.b64decode(element, validate=True) for element in flat]
    except binascii.Error as error:
        raise ProtocolError(f"input {INPUT!r}: JSON data carries each encoded image as base64 text; {error}") from error


def _flatten(data: list[Any]) -> list[Any]:
    return [item for element in data for item in (_flatten(element) if isinstance(element, list) else [element])]


def _requested_outputs(outputs: object, default_binary: bool) -> list[RequestedOutput]:
    if outputs is None:
        return [RequestedOutput(name, default_binary) for name in OUTPUTS]
    if not isinstance(outputs, list) or not all(isinstance(output, dict) for output in outputs):
        raise ProtocolError("'outputs' should be a list of objects with a 'name'")
    requested = []
    for output in outputs:
        name, parameters = output.get("name"), output.get("parameters") or {}
        if name not in OUTPUTS:
            raise ProtocolError(f"unknown output {name!r}; this model has {list(OUTPUTS)}")
        if not isinstance(parameters, dict) or {"classification", "shared_memory_region"} & set(parameters):
            raise ProtocolError(f"output {name!r}: classification and shared memory are not supported")
        binary = _flag(parameters, "binary_data") if "binary_data" in parameters else default_binary
        requested.append(RequestedOutput(name, binary))
    return requested


def _flag(parameters: Mapping[str, Any], key: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"parameter {key!r} should be true or false, got {value!r}")
    return value


def detect_params(parameters: Mapping[str, Any], max_detections: int, resolve: Callable[[list[str]], frozenset[int]]) -> DetectParams:
    """The request's detection options, checked; ``resolve`` turns class names into label ids."""
    timeout_us = _number(parameters, "timeout", 1, math.inf)
    return DetectParams(
        score_threshold=_number(parameters, "score_threshold", 0, 1),
        iou_threshold=_number(parameters, "iou_threshold", 0, 1),
        max_detections=_count(parameters, "max_detections", max_detections),
        classes=resolve(_names(parameters["classes"])) if "classes" in parameters else None,
        timeout_s=timeout_us / 1e6 if timeout_us is not None else None,
    )


def _number(parameters: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ProtocolError(f"parameter {key!r} should be a number from {low} to {high}, got {value!r}")
    return float(value)


def _count(parameters: Mapping[str, Any], key: str, high: int) -> int | None:
    value = parameters.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high):
        raise ProtocolError(f"parameter {key!r} should be an integer from 1 to {high}, got {value!r}")
    return value


def _names(value: object) -> list[str]:
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return value
    raise ProtocolError(f"parameter 'classes' should be class names, as a list or a comma-separated string, got {value!r}")


# Response side


def detection_tensors(responses: list[DetectResponse]) -> dict[str, np.ndarray]:
    """The outputs of N images, padded with zeros to the largest count M: boxes [N, M, 4], scores [N, M], labels [N, M]."""
    counts = [len(response.detections) for response in responses]
    rows = max(counts, default=0)
    boxes = np.zeros((len(responses), rows, 4), dtype=np.float32)
    scores = np.zeros((len(responses), rows), dtype=np.float32)
    labels = np.zeros((len(responses), rows), dtype=np.int64)
    for index, response in enumerate(responses):
        for row, detection in enumerate(response.detections):
            box = detection.box
            boxes[index, row] = (box.x1, box.y1, box.x2, box.y2)
            scores[index, row], labels[index, row] = detection.score, detection.label
    return {"num_detections": np.array(counts, dtype=np.int64), "boxes": boxes, "scores": scores, "labels": labels}


def encode_infer_response(manifest: ModelManifest, request: InferRequest, tensors: Mapping[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, the JSON header's length (for Inference-Header-Content-Length)."""
    outputs, chunks = [], []
    for requested in request.outputs:
        array = tensors[requested.name]
        output: dict[str, Any] = {"name": requested.name, "datatype": OUTPUTS[requested.name][0], "shape": list(array.shape)}
        if requested.binary:
            chunk = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            output["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            output["data"] = array.ravel().tolist()
        outputs.append(output)
    response: dict[str, Any] = {"model_name": manifest.name, "model_version": manifest.version, "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


# Metadata


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "fasterrcnn-serving", "version": version, "extensions": EXTENSIONS}


def model_metadata(manifest: ModelManifest, engine: str) -> dict[str, Any]:
    """Inputs and outputs with the batch dimension first (-1), as Triton reports a batching model's."""
    return {
        "name": manifest.name,
        "versions": [manifest.version],
        "platform": _PLATFORMS.get(engine, engine),
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": name, "datatype": datatype, "shape": shape} for name, (datatype, shape, _) in OUTPUTS.items()],
    }


@dataclass(frozen=True)
class Batching:
    """What the batcher does, in the terms of Triton's model configuration."""

    max_batch_size: int
    max_batch_wait_ms: float
    max_queue: int
    request_timeout_s: float
    gpu: bool


def model_config(manifest: ModelManifest, engine: str, batching: Batching) -> dict[str, Any]:
    """Triton's model configuration (JSON form), as perf_analyzer and model navigators read it.

    Dims leave out the batch dimension (Triton's rule when max_batch_size > 0);
    per-image scalars are dims [1] reshaped to [], so a batch is sent as [N] or [N, 1].
    """
    scalar = {"dims": [1], "reshape": {"shape": []}}
    return {
        "name": manifest.name,
        "platform": _PLATFORMS.get(engine, engine),
        "max_batch_size": batching.max_batch_size,
        "input": [{"name": INPUT, "data_type": "TYPE_STRING", "format": "FORMAT_NONE", **scalar}],
        "output": [
            {"name": name, "data_type": f"TYPE_{datatype}", **(scalar if dims == [1] else {"dims": dims})}
            for name, (datatype, _, dims) in OUTPUTS.items()
        ],
        "dynamic_batching": {
            "preferred_batch_size": [batching.max_batch_size],
            "max_queue_delay_microseconds": round(batching.max_batch_wait_ms * 1000),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(batching.request_timeout_s * 1e6),
                "max_queue_size": batching.max_queue,
            },
        },
        "instance_group": [{"name": manifest.name, "kind": "KIND_GPU" if batching.gpu else "KIND_CPU", "count": 1}],
        "parameters": {
            "categories": {"string_value": json.dumps(manifest.categories)},
            "canvas": {"string_value": f"{manifest.canvas[0]}x{manifest.canvas[1]}"},
            "max_detections": {"string_value": str(manifest.max_detections)},
            "score_threshold": {"string_value": str(manifest.score_threshold)},
            "iou_threshold": {"string_value": str(manifest.iou_threshold)},
        },
    }
