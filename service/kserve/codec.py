"""The v2 protocol's codec for this detector: the infer request's bytes in, the detections' tensors out.

The model speaks the protocol as one input and four outputs (service/kserve/__init__.py):
the request's JSON header is validated by :mod:`service.kserve.messages`, then
checked against this signature here; the images are split out of the binary
data or decoded from base64. gRPC (service/grpc/) reads its message into the
same model and calls the same checks (:func:`read_infer_request`), options
(:func:`detect_options`) and output tensors (:func:`output_tensors`); each
transport only reads its envelope and writes its answer.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.detector import ImageDetections
from service.errors import BadRequest, BodyTooLarge
from service.kserve.messages import InferInputTensor, InferOutputTensor, InferParameters, InferRequestBody, InferResponseBody, explain
from service.manifest import ModelManifest
from service.options import DetectParams, detect_params

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT = "images"
# name -> (datatype, shape in the model metadata, Triton config dims); -1: variable
OUTPUTS: dict[str, tuple[str, list[int], list[int]]] = {
    "num_detections": ("INT64", [-1], [1]),
    "boxes": ("FP32", [-1, -1, 4], [-1, 4]),
    "scores": ("FP32", [-1, -1], [-1]),
    "labels": ("INT64", [-1, -1], [-1]),
}
_LENGTH = struct.Struct("<I")


class ProtocolError(BadRequest):
    """A request that breaks the protocol or this model's signature (the protocol answers 400)."""


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A parsed infer request: the encoded images, the request's parameters and the outputs to return, in order."""

    id: str | None
    images: list[bytes]
    parameters: InferParameters
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
    return read_infer_request(_validated(header), lambda tensor: _http_elements(tensor, binary), max_batch)


def read_infer_request(request: InferRequestBody, elements: Callable[[InferInputTensor], list[bytes]], max_batch: int) -> InferRequest:
    """Checks a validated request against this model's signature; ``elements`` reads the input's data the transport's way.

    Both transports come here: HTTP with its JSON header, gRPC with its message read into the same model
    (service/grpc/messages.py), so that what one refuses, the other refuses with the same words.
    """
    parameters = request.parameters or InferParameters()
    images = _read_images(_the_input(request.inputs), elements)
    if len(images) > max_batch:
        raise ProtocolError(f"the request holds {len(images)} images; this model's max_batch_size is {max_batch}")
    return InferRequest(
        id=request.id, images=images, parameters=parameters, outputs=_requested_outputs(request, parameters.binary_data_output)
    )


def validated(request: dict[str, Any]) -> InferRequestBody:
    """The request (the JSON header's object, or a gRPC message read into one) validated against the protocol."""
    try:
        return InferRequestBody.model_validate(request)
    except ValidationError as error:
        raise ProtocolError(f"the request does not follow the protocol: {explain(error)}") from error


def detect_options(manifest: ModelManifest, parameters: InferParameters, arrived: float, deadline_s: float | None = None) -> DetectParams:
    """The request's options checked against the model (service/options.py), as /detect checks its query.

    The deadline is the shorter of Triton's ``timeout`` parameter (microseconds) and the transport's own
    (``deadline_s``: a gRPC deadline's time left), counted from ``arrived``.
    """
    timeouts = [
        timeout for timeout in (None if parameters.timeout is None else parameters.timeout / 1e6, deadline_s) if timeout is not None
    ]
    return detect_params(
        manifest,
        **parameters.model_dump(include={"score_threshold", "iou_threshold", "max_detections", "classes"}),
        timeout_s=min(timeouts, default=None),
        arrived=arrived,
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} should be a byte count within the body's {len(body)} bytes")
    return body[: int(header_length)], body[int(header_length) :]


def _validated(header: bytes) -> InferRequestBody:
    try:
        request = json.loads(header)
    except (UnicodeDecodeError, ValueError) as error:
        raise ProtocolError(f"the request header is not JSON: {error} (binary data needs {HEADER_LENGTH})") from error
    return validated(request)


def _the_input(inputs: list[InferInputTensor]) -> InferInputTensor:
    names = [tensor.name for tensor in inputs]
    if names != [INPUT]:
        missing = "" if INPUT in names else f"missing input {INPUT!r}; "
        raise ProtocolError(f"{missing}the request's inputs are {names}; this model takes exactly one, {INPUT!r} (BYTES, encoded images)")
    return inputs[0]


def _read_images(tensor: InferInputTensor, elements: Callable[[InferInputTensor], list[bytes]]) -> list[bytes]:
    if tensor.datatype != "BYTES":
        raise ProtocolError(f"input {INPUT!r} has datatype {tensor.datatype!r}; this model takes BYTES (encoded images)")
    count = _batch_of(tensor.shape)
    images = elements(tensor)
    if len(images) != count:
        raise ProtocolError(f"input {INPUT!r} has shape {tensor.shape} but {len(images)} elements of data")
    if not images:
        raise ProtocolError(f"input {INPUT!r} holds no image")
    return images


def _http_elements(tensor: InferInputTensor, binary: bytes) -> list[bytes]:
    """The images as binary data (binary_data_size declared) or as JSON base64 strings."""
    if tensor.parameters is not None and tensor.parameters.binary_data_size is not None:
        size = tensor.parameters.binary_data_size
        if size != len(binary):
            raise ProtocolError(f"input {INPUT!r} declares binary_data_size {size!r}; the body holds {len(binary)} bytes after the header")
        return bytes_elements(binary)
    if binary:
        raise ProtocolError(f"the body has {len(binary)} bytes after the header, but no input declares binary_data_size")
    return _json_elements(tensor.data)


def _batch_of(shape: list[int]) -> int:
    """The number of images of a shape [N] or [N, 1]."""
    if len(shape) in (1, 2) and shape[1:] in ([], [1]):
        return shape[0]
    raise ProtocolError(f"input {INPUT!r} has shape {shape}; this model takes [N] (or [N, 1]): one encoded image per element")


def bytes_elements(binary: bytes) -> list[bytes]:
    """BYTES elements as the protocol serialises them (HTTP's binary data, gRPC's raw contents): each a 4-byte
    little-endian length, then the bytes."""
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


def _requested_outputs(request: InferRequestBody, default_binary: bool) -> list[RequestedOutput]:
    if request.outputs is None:
        return [RequestedOutput(name, default_binary) for name in OUTPUTS]
    requested = []
    for output in request.outputs:
        if output.name not in OUTPUTS:
            raise ProtocolError(f"unknown output {output.name!r}; this model has {list(OUTPUTS)}")
        binary = output.parameters.binary_data if output.parameters is not None else None
        requested.append(RequestedOutput(output.name, default_binary if binary is None else binary))
    return requested


# Response side


def detection_tensors(images: list[ImageDetections]) -> dict[str, np.ndarray]:
    """The outputs of N images, padded with zeros to the largest count M: boxes [N, M, 4], scores [N, M], labels [N, M]."""
    counts = [len(found) for found in images]
    rows = max(counts, default=0)
    boxes = np.zeros((len(images), rows, 4), dtype=np.float32)
    scores = np.zeros((len(images), rows), dtype=np.float32)
    labels = np.zeros((len(images), rows), dtype=np.int64)
    for index, found in enumerate(images):
        count = len(found)
        boxes[index, :count], scores[index, :count], labels[index, :count] = found.boxes, found.scores, found.labels
    return {"num_detections": np.array(counts, dtype=np.int64), "boxes": boxes, "scores": scores, "labels": labels}


@dataclass(frozen=True)
class OutputTensor:
    """One requested output, as both transports carry it: name, datatype, shape, and the values."""

    name: str
    datatype: str
    array: np.ndarray

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)

    def raw(self) -> bytes:
        """The values row-major, little-endian: HTTP's binary data and gRPC's raw_output_contents."""
        return np.ascontiguousarray(self.array, dtype=self.array.dtype.newbyteorder("<")).tobytes()


def output_tensors(request: InferRequest, tensors: dict[str, np.ndarray]) -> list[OutputTensor]:
    """The outputs the request asked for, in its order."""
    return [OutputTensor(requested.name, OUTPUTS[requested.name][0], tensors[requested.name]) for requested in request.outputs]


def encode_infer_response(manifest: ModelManifest, request: InferRequest, tensors: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, the JSON header's length (for Inference-Header-Content-Length)."""
    outputs, chunks = [], []
    for requested, tensor in zip(request.outputs, output_tensors(request, tensors), strict=True):
        output = InferOutputTensor(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if requested.binary:
            chunk = tensor.raw()
            output.parameters = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            output.data = tensor.array.ravel().tolist()
        outputs.append(output)
    response = InferResponseBody(model_name=manifest.name, model_version=manifest.version, id=request.id, outputs=outputs)
    header = response.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
