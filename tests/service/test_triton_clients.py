"""tritonclient.http and tritonclient.grpc, unchanged, through the same tests against one real server.

What a Triton user meets first must not depend on the protocol: readiness, metadata, config, inference equal to
/detect for the same image and options, a wrong datatype refused as the client's error. The bad-input corpus
(tests/service/corpus.py) goes through both too: its image bodies as v2 BYTES elements, each served or refused as
the client's error (HTTP 400 or 413, gRPC INVALID_ARGUMENT), never a server error, and the server unchanged after.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from bench.servers import ServerProcess, free_port
from tests.service import corpus
from tests.service.corpus import INVALID_PARAMETER, Kind
from tests.service.helpers import serving
from tests.service.test_kserve import assert_equal_to_detect, detect

MODEL, VERSION = "shapes", "7"  # the small package's
PROTOCOLS = ("http", "grpc")
OUTPUTS = [("num_detections", "INT64", [-1]), ("boxes", "FP32", [-1, -1, 4]), ("scores", "FP32", [-1, -1]), ("labels", "INT64", [-1, -1])]
# What each protocol answers a request the client got wrong.
CLIENT_ERRORS = {"http": {"400", "413"}, "grpc": {"StatusCode.INVALID_ARGUMENT"}}


@dataclass(frozen=True)
class Serving:
    process: ServerProcess
    grpc_address: str


@pytest.fixture(scope="module")
def server(small_package: Path) -> Iterator[Serving]:  # type: ignore[override]
    port = free_port()
    with serving(small_package, DETECTOR_MAX_BATCH_WAIT_MS="50", DETECTOR_GRPC_PORT=str(port)) as process:
        yield Serving(process, f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def http(server: Serving) -> Iterator[httpx.Client]:  # type: ignore[override]
    with httpx.Client(base_url=server.process.url, timeout=60) as client:
        yield client


@dataclass(frozen=True)
class Triton:
    """One protocol's tritonclient, and what differs in how it hands back metadata and config: nothing else."""

    protocol: str
    module: ModuleType
    client: Any

    def metadata(self) -> dict[str, Any]:
        found = self.client.get_model_metadata(MODEL)
        if self.protocol == "http":
            tensors = {side: [(t["name"], t["datatype"], t["shape"]) for t in found[side]] for side in ("inputs", "outputs")}
            return {"name": found["name"], "versions": found["versions"], "platform": found["platform"], **tensors}
        tensors = {side: [(t.name, t.datatype, list(t.shape)) for t in getattr(found, side)] for side in ("inputs", "outputs")}
        return {"name": found.name, "versions": list(found.versions), "platform": found.platform, **tensors}

    def config(self) -> dict[str, Any]:
        found = self.client.get_model_config(MODEL)
        if self.protocol == "http":
            inputs = [(i["name"], i["data_type"], i["dims"]) for i in found["input"]]
            return {
                "name": found["name"],
                "max_batch_size": found["max_batch_size"],
                "inputs": inputs,
                "outputs": [o["name"] for o in found["output"]],
            }
        config, type_name = found.config, triton_grpc.model_config_pb2.DataType.Name
        inputs = [(i.name, type_name(i.data_type), list(i.dims)) for i in config.input]
        return {"name": config.name, "max_batch_size": config.max_batch_size, "inputs": inputs, "outputs": [o.name for o in config.output]}

    def infer(self, images: list[bytes], datatype: str = "BYTES", **parameters: object) -> Any:
        tensor = self.module.InferInput("images", [len(images)], datatype)
        if datatype == "BYTES":
            tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
        else:
            tensor.set_data_from_numpy(np.zeros(len(images), dtype=np.float32 if datatype == "FP32" else np.int32))
        return self.client.infer(MODEL, [tensor], parameters=parameters or None)

    def refusal(self, images: list[bytes], datatype: str = "BYTES", **parameters: object) -> InferenceServerException:
        with pytest.raises(InferenceServerException) as error:
            self.infer(images, datatype, **parameters)
        return error.value


@pytest.fixture(scope="module", params=PROTOCOLS)
def triton(request: pytest.FixtureRequest, server: Serving) -> Iterator[Triton]:
    if request.param == "http":
        client: Any = triton_http.InferenceServerClient(url=f"127.0.0.1:{server.process.port}", network_timeout=120)
        yield Triton("http", triton_http, client)
    else:
        client = triton_grpc.InferenceServerClient(url=server.grpc_address)
        yield Triton("grpc", triton_grpc, client)
    client.close()


def test_readiness(triton: Triton) -> None:
    client = triton.client
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, VERSION)
    assert not client.is_model_ready("other") and not client.is_model_ready(MODEL, "8")


def test_metadata_and_config(triton: Triton) -> None:
    metadata = triton.metadata()
    assert (metadata["name"], metadata["versions"], metadata["platform"]) == (MODEL, [VERSION], "onnxruntime_onnx")
    assert metadata["inputs"] == [("images", "BYTES", [-1])] and metadata["outputs"] == OUTPUTS
    config = triton.config()
    assert config == {
        "name": MODEL,
        "max_batch_size": 8,
        "inputs": [("images", "TYPE_STRING", [1])],
        "outputs": [name for name, _, _ in OUTPUTS],
    }


def test_inference_equals_detect_for_the_same_images_and_options(triton: Triton, http: httpx.Client, scene_images: list[bytes]) -> None:
    images, score, iou = scene_images[:3], 0.1, 0.6
    result = triton.infer(images, score_threshold=score, iou_threshold=iou)
    expected = [detect(http, image, score, iou) for image in images]
    assert sum(map(len, expected)) > 0, "the scenes should give detections to compare"
    assert_equal_to_detect(result, expected)


@pytest.mark.parametrize("datatype", ["FP32", "INT32"])
def test_a_wrong_datatype_is_the_clients_error(triton: Triton, http: httpx.Client, scene_images: list[bytes], datatype: str) -> None:
    error = triton.refusal(scene_images[:1], datatype)
    assert error.status() in CLIENT_ERRORS[triton.protocol] and f"datatype '{datatype}'" in str(error.message())
    assert triton.infer(scene_images[:1]).as_numpy("num_detections").shape == (1,), "served as before"


def _image_kinds() -> list[Kind]:
    """The corpus's kinds whose body is all there is to them: an image (or not) sent as image bytes, no query.
    Content types and multipart forms are HTTP's alone: v2 sends bytes without either."""
    image_types = {*corpus.FORMATS.values(), "application/octet-stream"}
    return [
        kind
        for kind in corpus.corpus()
        if not kind.query and kind.content_type in image_types and kind.status in (200, 413, 422) and kind.problem_type != INVALID_PARAMETER
    ]


@pytest.mark.parametrize("kind", _image_kinds(), ids=lambda kind: kind.name)
def test_each_corpus_image_is_served_or_refused_as_the_clients_error(triton: Triton, kind: Kind) -> None:
    if kind.status == 200:
        result = triton.infer([kind.body], score_threshold=0.05)
        assert result.as_numpy("num_detections").shape == (1,)
        return
    error = triton.refusal([kind.body])
    assert error.status() in CLIENT_ERRORS[triton.protocol], (error.status(), error.message())
    assert error.message(), "the refusal says why"


def test_the_corpus_leaves_the_server_serving(triton: Triton, http: httpx.Client, scene_images: list[bytes]) -> None:
    assert len(_image_kinds()) >= 20, "the corpus should give many image kinds"
    assert http.get("/health/ready").status_code == 200
    expected = [detect(http, scene_images[0], 0.1, 0.5)]
    assert_equal_to_detect(triton.infer(scene_images[:1], score_threshold=0.1, iou_threshold=0.5), expected)
