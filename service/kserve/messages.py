"""The v2 protocol's JSON bodies: the infer request is validated by these models, and OpenAPI shows them.

Strict, as the protocol's types are: a threshold sent as the string "0.5" or a
flag sent as 1 is refused, not guessed at. Names the protocol allows but this
model does not use are kept and ignored, as Triton does.
"""

from __future__ import annotations

import reprlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError, model_validator

from service.options import ClassNames, MaxDetections, Threshold

_STRICT = ConfigDict(strict=True, extra="allow")


class ProtocolErrorBody(BaseModel):
    """The protocol's error body."""

    error: str


def _refuse(parameters: BaseModel, names: tuple[str, ...], what: str) -> None:
    """Refuses the protocol extensions this server does not implement, by name."""
    given = sorted(set(names) & set(parameters.model_extra or {}))
    if given:
        raise ValueError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} not supported; {what}")


class InputParameters(BaseModel):
    model_config = _STRICT

    binary_data_size: NonNegativeInt | None = Field(default=None, description="the bytes of binary data that follow the JSON header")

    @model_validator(mode="after")
    def _no_shared_memory(self) -> InputParameters:
        _refuse(self, ("shared_memory_region",), "send the images as binary or JSON data")
        return self


class InferInputTensor(BaseModel):
    model_config = _STRICT

    name: str = Field(description="'images', the model's one input")
    datatype: str = Field(description="BYTES")
    shape: list[NonNegativeInt] = Field(description="[N] or [N, 1]: one encoded image per element")
    parameters: InputParameters | None = None
    data: list[Any] | None = Field(default=None, description="the images as base64 strings, when not sent as binary data")


class OutputParameters(BaseModel):
    model_config = _STRICT

    binary_data: bool | None = Field(default=None, description="whether this output comes as binary data")

    @model_validator(mode="after")
    def _no_extensions(self) -> OutputParameters:
        _refuse(self, ("classification", "shared_memory_region"), "this server returns the outputs as JSON or binary data")
        return self


class InferRequestedOutput(BaseModel):
    model_config = _STRICT

    name: str = Field(description="num_detections, boxes, scores or labels")
    parameters: OutputParameters | None = None


class InferParameters(BaseModel):
    """The request's options: the same rules as /detect's query, in the protocol's names."""

    model_config = _STRICT

    score_threshold: Threshold | None = None
    iou_threshold: Threshold | None = None
    max_detections: MaxDetections | None = None
    classes: ClassNames | None = None
    timeout: float | None = Field(default=None, ge=1, allow_inf_nan=False, description="Triton's deadline, in microseconds")
    binary_data_output: bool = Field(default=False, description="every output as binary data, unless an output says otherwise")


class InferRequestBody(BaseModel):
    """The JSON header of an infer request (with the binary tensor extension, binary data follows it)."""

    model_config = _STRICT

    id: str | None = None
    parameters: InferParameters | None = None
    inputs: list[InferInputTensor]
    outputs: list[InferRequestedOutput] | None = Field(default=None, description="default: every output, in the model's order")


class InferOutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[int | float] | None = Field(default=None, description="the values, row-major, when not sent as binary data")
    parameters: dict[str, Any] | None = Field(default=None, description="binary_data_size when the values follow the JSON header")


class InferResponseBody(BaseModel):
    """The JSON header of an infer response (binary outputs follow it, as Inference-Header-Content-Length tells)."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutputTensor]


def explain(error: ValidationError) -> str:
    """Pydantic's errors as one sentence a client can act on: where, what is wrong, and what was sent."""
    parts = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "the request"
        message = problem["msg"].removeprefix("Value error, ")
        got = f", got {reprlib.repr(problem['input'])}" if problem["type"] != "value_error" else ""
        parts.append(f"'{where}': {message}{got}")
    return "; ".join(parts)
