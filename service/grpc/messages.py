"""The gRPC messages in and out: read into the v2 models HTTP validates, answered from the same codec and metadata.

An infer request becomes the dict the HTTP side reads from its JSON header, so
both transports validate it with one model (service/kserve/messages.py) and
check it with one codec (service/kserve/codec.py): what one refuses, the other
refuses with the same message. Only the data differ: here the images come as
``raw_input_contents`` (each element a 4-byte little-endian length, then its
bytes, as HTTP's binary data) or as ``contents.bytes_contents``; every output
goes back in ``raw_output_contents``, the one place tritonclient's ``as_numpy``
reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from google.protobuf.json_format import ParseDict
from tritonclient.grpc import model_config_pb2, service_pb2

from service.kserve import codec
from service.kserve.codec import INPUT, InferRequest, ProtocolError
from service.kserve.messages import InferInputTensor
from service.manifest import ModelManifest


def parameter_values(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A protobuf map of InferParameter as plain values (bool, int, float or str, as each was set)."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def infer_request(request: Any, max_batch: int) -> InferRequest:
    """A ModelInferRequest checked as v2 over HTTP checks its JSON header; the images read from the message's data."""
    header = {
        "id": request.id or None,
        "parameters": parameter_values(request.parameters) or None,
        "inputs": [
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.shape),
                "parameters": parameter_values(tensor.parameters) or None,
            }
            for tensor in request.inputs
        ],
        "outputs": [{"name": output.name, "parameters": parameter_values(output.parameters) or None} for output in request.outputs] or None,
    }
    return codec.read_infer_request(codec.validated(header), _elements_of(request), max_batch)


def _elements_of(request: Any) -> Callable[[InferInputTensor], list[bytes]]:
    def elements(tensor: InferInputTensor) -> list[bytes]:
        index = [given.name for given in request.inputs].index(tensor.name)
        listed = list(request.inputs[index].contents.bytes_contents)
        if not request.raw_input_contents:
            if not listed:
                raise ProtocolError(f"input {INPUT!r} has no data: send it in raw_input_contents or in contents.bytes_contents")
            return listed
        if listed:
            raise ProtocolError(f"input {INPUT!r} has data in both raw_input_contents and contents; send it in one")
        if len(request.raw_input_contents) != len(request.inputs):
            raise ProtocolError(f"the request has {len(request.raw_input_contents)} raw_input_contents for {len(request.inputs)} inputs")
        return codec.bytes_elements(request.raw_input_contents[index])

    return elements


def infer_response(manifest: ModelManifest, request: InferRequest, tensors: dict[str, np.ndarray]) -> Any:
    """The ModelInferResponse: each requested output's datatype and shape, and its values in raw_output_contents, in order."""
    outputs = codec.output_tensors(request, tensors)
    return service_pb2.ModelInferResponse(
        model_name=manifest.name,
        model_version=manifest.version,
        id=request.id or "",
        outputs=[service_pb2.ModelInferResponse.InferOutputTensor(name=o.name, datatype=o.datatype, shape=o.shape) for o in outputs],
        raw_output_contents=[output.raw() for output in outputs],
    )


def server_metadata(metadata: dict[str, Any]) -> Any:
    return ParseDict(metadata, service_pb2.ServerMetadataResponse())


def model_metadata(metadata: dict[str, Any]) -> Any:
    return ParseDict(metadata, service_pb2.ModelMetadataResponse())


def model_config(config: dict[str, Any]) -> Any:
    """Triton's model configuration, from the JSON form that v2 over HTTP answers (service/kserve/model_config.py)."""
    return service_pb2.ModelConfigResponse(config=ParseDict(config, model_config_pb2.ModelConfig()))
