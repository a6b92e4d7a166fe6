"""The KServe v2 protocol over gRPC, spoken to by the real Triton client (tritonclient[grpc]) on a real server."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from bench.servers import ServerProcess, free_port
from service.api.admission import AdmissionMiddleware
from service.grpc.server import GrpcServer
from service.grpc.servicer import Servicer
from service.main import create_app
from service.settings import Settings
from tests.service.helpers import png_bytes, serving, solid_image
from tests.service.readings import scrape, value

OUTPUTS = ["num_detections", "boxes", "scores", "labels"]
KEY = "a-grpc-test-key-0123456789"
INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class GrpcServing:
    process: ServerProcess
    address: str  # host:port of its gRPC server


@pytest.fixture(scope="module")
def server(small_package: Path) -> Iterator[GrpcServing]:
    """A real server with gRPC on; a long batch window, so that requests arriving together share a graph run."""
    port = free_port()
    with serving(small_package, DETECTOR_MAX_BATCH_WAIT_MS="300", DETECTOR_GRPC_PORT=str(port)) as process:
        yield GrpcServing(process, f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def client(server: GrpcServing) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(url=server.address) as client:
        yield client


@pytest.fixture(scope="module")
def http_client(server: GrpcServing) -> Iterator[triton_http.InferenceServerClient]:
    with triton_http.InferenceServerClient(url=f"127.0.0.1:{server.process.port}", network_timeout=120) as client:
        yield client


def images_input(images: list[bytes], module: object = triton, datatype: str = "BYTES") -> object:
    tensor = module.InferInput("images", [len(images)], datatype)  # type: ignore[attr-defined]
    return tensor.set_data_from_numpy(np.array(images, dtype=np.object_))


def bytes_request(images: list[bytes], model: str = "shapes", shape: list[int] | None = None) -> service_pb2.ModelInferRequest:
    """An infer request with the images in contents.bytes_contents (tritonclient's InferInput sends raw contents)."""
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="images", datatype="BYTES", shape=shape or [len(images)]).contents.bytes_contents.extend(images)
    return request


def refusal(call: object, *args: object, **kwargs: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as error:
        call(*args, **kwargs)  # type: ignore[operator]
    return error.value


def assert_same_outputs(grpc_result: object, http_result: object) -> None:
    for name in OUTPUTS:
        ours, theirs = grpc_result.as_numpy(name), http_result.as_numpy(name)  # type: ignore[attr-defined]
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, name
        np.testing.assert_array_equal(ours, theirs, err_msg=name)


# Health and metadata


def test_health_rpcs_answer_as_the_http_health_does(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("shapes") and client.is_model_ready("default") and client.is_model_ready("shapes", "7")
    assert not client.is_model_ready("other") and not client.is_model_ready("shapes", "8")


def test_metadata_and_config_equal_the_http_answers(
    client: triton.InferenceServerClient, http_client: triton_http.InferenceServerClient
) -> None:
    server = client.get_server_metadata()
    assert server.name == http_client.get_server_metadata()["name"] and "binary_tensor_data" in server.extensions
    metadata, http_metadata = client.get_model_metadata("shapes"), http_client.get_model_metadata("shapes")
    assert (metadata.name, list(metadata.versions), metadata.platform) == ("shapes", ["7"], "onnxruntime_onnx")
    for ours, theirs in zip([*metadata.inputs, *metadata.outputs], [*http_metadata["inputs"], *http_metadata["outputs"]], strict=True):
        assert (ours.name, ours.datatype, list(ours.shape)) == (theirs["name"], theirs["datatype"], theirs["shape"])
    config = client.get_model_config("default").config
    assert config.name == "shapes" and config.max_batch_size == 8 and config.platform == "onnxruntime_onnx"
    assert config.dynamic_batching.max_queue_delay_microseconds == 300_000
    assert config.input[0].data_type == triton.model_config_pb2.TYPE_STRING and list(config.input[0].dims) == [1]
    assert [output.name for output in config.output] == OUTPUTS
    assert config.parameters["canvas"].string_value == http_client.get_model_config("shapes")["parameters"]["canvas"]["string_value"]
    error = refusal(client.get_model_metadata, "other")
    assert error.status() == "StatusCode.NOT_FOUND" and "unknown model 'other'" in error.message()
    assert refusal(client.get_model_config, "shapes", "8").status() == "StatusCode.NOT_FOUND"


# Inference


def test_infer_with_raw_contents_equals_v2_over_http(
    client: triton.InferenceServerClient, http_client: triton_http.InferenceServerClient, scene_images: list[bytes]
) -> None:
    images = scene_images[:3]
    options = {"score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 10}
    result = client.infer("shapes", [images_input(images)], request_id="r1", parameters=options)
    expected = http_client.infer("shapes", [images_input(images, triton_http)], parameters=options)
    assert result.get_response().id == "r1" and result.get_response().model_version == "7"
    assert result.as_numpy("num_detections").tolist() == expected.as_numpy("num_detections").tolist()
    assert result.as_numpy("num_detections").sum() > 0, "the scenes should have detections to compare"
    assert_same_outputs(result, expected)
    # Outputs asked for by name come in that order, each in raw_output_contents.
    wanted = [triton.InferRequestedOutput("scores"), triton.InferRequestedOutput("num_detections")]
    chosen = client.infer("shapes", [images_input(images)], outputs=wanted, parameters=options)
    assert [o.name for o in chosen.get_response().outputs] == ["scores", "num_detections"]
    assert len(chosen.get_response().raw_output_contents) == 2
    np.testing.assert_array_equal(chosen.as_numpy("scores"), expected.as_numpy("scores"))


def test_infer_with_bytes_contents_equals_raw_contents(
    server: GrpcServing, client: triton.InferenceServerClient, scene_images: list[bytes]
) -> None:
    images = scene_images[3:5]
    request = bytes_request(images, "default", [len(images), 1])
    request.parameters["classes"].string_param = "class1,class3"
    with grpc.insecure_channel(server.address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    raw = client.infer("shapes", [images_input(images)], parameters={"classes": "class1,class3"})
    assert_same_outputs(triton.InferResult(response), raw)


def test_bad_requests_are_invalid_argument_with_the_http_message(
    client: triton.InferenceServerClient, http_client: triton_http.InferenceServerClient, scene_images: list[bytes]
) -> None:
    floats = {
        module: module.InferInput("images", [1], "FP32").set_data_from_numpy(np.zeros(1, np.float32)) for module in (triton, triton_http)
    }
    cases = [
        ([floats[triton]], [floats[triton_http]], None, "datatype 'FP32'"),
        ([images_input(scene_images[:1])], [images_input(scene_images[:1], triton_http)], {"score_threshold": 2.0}, "score_threshold"),
        ([images_input([b"not an image"])], [images_input([b"not an image"], triton_http)], None, "image"),
        ([images_input(scene_images[:1])], [images_input(scene_images[:1], triton_http)], {"classes": "unicorn"}, "unicorn"),
    ]
    for grpc_inputs, http_inputs, parameters, word in cases:
        ours = refusal(client.infer, "shapes", grpc_inputs, parameters=parameters)
        theirs = refusal(http_client.infer, "shapes", http_inputs, parameters=parameters)
        assert ours.status() == "StatusCode.INVALID_ARGUMENT" and theirs.status() == "400", (ours, theirs)
        assert ours.message() == theirs.message() and word in ours.message(), (ours.message(), theirs.message())
    error = refusal(client.infer, "other", [images_input(scene_images[:1])])
    assert error.status() == "StatusCode.NOT_FOUND" and "unknown model 'other'" in error.message()


def test_deadlines_give_deadline_exceeded(client: triton.InferenceServerClient, scene_images: list[bytes]) -> None:
    # Triton's timeout (microseconds, a request parameter): the server's own deadline passes in the 300 ms batch window.
    error = refusal(client.infer, "shapes", [images_input(scene_images[:1])], timeout=50_000)
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED" and "deadline" in error.message()
    error = refusal(client.infer, "shapes", [images_input(scene_images[:1])], client_timeout=0.1)
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert client.infer("shapes", [images_input(scene_images[:1])]).as_numpy("num_detections").shape == (1,)


class Aborted(Exception):
    """What DeadlineContext.abort raises, as grpcio's abort() ends a handler."""


class DeadlineContext:
    """A servicer context with a gRPC deadline ``remaining_s`` away, as grpcio hands a handler."""

    def __init__(self, remaining_s: float) -> None:
        self.remaining_s = remaining_s
        self.code: grpc.StatusCode | None = None

    def time_remaining(self) -> float:
        return self.remaining_s

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: object = ()) -> None:
        self.code = code
        raise Aborted(details)


def test_the_grpc_deadline_is_the_requests_deadline(make_client: Callable[..., TestClient], scene_images: list[bytes]) -> None:
    """grpcio cancels an RPC at its deadline on its own; the server also takes that deadline as the request's, so the
    batcher drops the request (and says why) rather than holding it for DETECTOR_REQUEST_TIMEOUT_S."""
    client = make_client(max_batch_wait_ms=500)
    request, context = bytes_request(scene_images[:1]), DeadlineContext(0.1)
    with pytest.raises(Aborted, match="deadline"):
        client.portal.call(Servicer(client.app).ModelInfer, request, context)  # type: ignore[arg-type, union-attr]
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_grpc_and_http_requests_share_batches_and_metrics(
    server: GrpcServing, client: triton.InferenceServerClient, scene_images: list[bytes]
) -> None:
    http = server.process.http
    before = scrape(http)
    start = threading.Barrier(2)

    def over_grpc() -> object:
        start.wait()
        return client.infer("shapes", [images_input(scene_images[:1])])

    def over_http() -> int:
        start.wait()
        return http.post("/detect", content=scene_images[1], headers={"Content-Type": "image/jpeg"}).status_code

    with ThreadPoolExecutor(2) as pool:
        grpc_answer, http_answer = pool.submit(over_grpc), pool.submit(over_http)
        assert http_answer.result() == 200 and grpc_answer.result() is not None
    after = scrape(http)
    runs = value(after, "detector_batch_size", "detector_batch_size_count") - value(
        before, "detector_batch_size", "detector_batch_size_count"
    )
    images = value(after, "detector_batch_size", "detector_batch_size_sum") - value(
        before, "detector_batch_size", "detector_batch_size_sum"
    )
    assert (runs, images) == (1, 2), "the gRPC and the HTTP image should have run in one batch"
    assert value(after, "detector_requests", "detector_requests_total", protocol="grpc", route=INFER, status="OK") >= 1
    assert value(after, "detector_requests", "detector_requests_total", protocol="http", route="/detect", status="200") >= 1


# Servers of their own: keys, limits, readiness, the drain


def test_keys_message_limit_and_full_queue(small_package: Path, scene_images: list[bytes]) -> None:
    port = free_port()
    env = {"DETECTOR_API_KEYS": KEY, "DETECTOR_GRPC_PORT": str(port), "DETECTOR_GRPC_MAX_MESSAGE_MB": "1"}
    env |= {"DETECTOR_MAX_BATCH_SIZE": "1", "DETECTOR_MAX_QUEUE": "1", "DETECTOR_MAX_BATCH_WAIT_MS": "0"}
    with serving(small_package, **env), triton.InferenceServerClient(url=f"127.0.0.1:{port}") as client:
        assert client.is_server_live() and client.is_server_ready(), "health stays open, as over HTTP"
        inputs = [images_input(scene_images[:1])]
        for headers, words in [(None, "needs an API key"), ({"authorization": "Bearer wrong-key-0123456789"}, "not valid")]:
            error = refusal(client.infer, "shapes", inputs, headers=headers)
            assert error.status() == "StatusCode.UNAUTHENTICATED" and words in error.message()
        assert refusal(client.get_model_metadata, "shapes").status() == "StatusCode.UNAUTHENTICATED"
        for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
            assert client.infer("shapes", inputs, headers=headers).as_numpy("num_detections").shape == (1,)
        noise = png_bytes(solid_image(1, 1)) + np.random.default_rng(0).bytes(2 * 1024 * 1024)
        error = refusal(client.infer, "shapes", [images_input([noise])], headers={"x-api-key": KEY})
        assert error.status() == "StatusCode.RESOURCE_EXHAUSTED", error
        # Past the admission limit (queue 1 + batch 1): refused at once with a retry hint, the others served.
        request = bytes_request(scene_images[:1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
            calls = [infer.future(request, metadata=(("x-api-key", KEY),), timeout=60) for _ in range(24)]
            errors = [call.exception() for call in calls]
        refused = [e for e in errors if e is not None]
        assert refused and len(refused) < len(calls), errors
        assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and ("retry-after", "1") in e.trailing_metadata() for e in refused)


def test_grpc_counts_in_the_http_servers_admission(make_client: Callable[..., TestClient]) -> None:
    """One limit for both protocols: gRPC counts in the app's own admission, the one its middleware counts in."""
    client = make_client(max_queue=3, max_batch_size=2)
    admission = Servicer(client.app).admission  # type: ignore[arg-type]
    middleware: Any = client.app.middleware_stack  # type: ignore[attr-defined]
    while not isinstance(middleware, AdmissionMiddleware):
        middleware = middleware.app
    assert admission is middleware.admission and admission.limit == 5


def test_not_ready_is_unavailable(small_package: Path, scene_images: list[bytes]) -> None:
    """A server whose model has not loaded (no lifespan has run): health says so, and inference is UNAVAILABLE."""
    port = free_port()
    app = create_app(Settings(model_dir=small_package, grpc_port=port))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    grpc_server = asyncio.run_coroutine_threadsafe(_started(app, app.state.settings), loop).result(30)
    try:
        with triton.InferenceServerClient(url=f"127.0.0.1:{port}") as client:
            assert client.is_server_live() and not client.is_server_ready() and not client.is_model_ready("shapes")
            error = refusal(client.infer, "shapes", [images_input(scene_images[:1])])
            assert error.status() == "StatusCode.UNAVAILABLE" and "loading" in error.message()
    finally:
        asyncio.run_coroutine_threadsafe(grpc_server.stop(0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


async def _started(app: FastAPI, settings: Settings) -> GrpcServer:
    server = GrpcServer(app, settings)
    await server.start()
    return server


def test_a_grpc_port_in_use_stops_the_server(start_server) -> None:  # type: ignore[no-untyped-def]
    """Even one that allows sharing (SO_REUSEPORT, as grpcio sets by default): a port is one server's."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        process = start_server(DETECTOR_GRPC_PORT=str(taken.getsockname()[1]))
        assert process.process.wait(timeout=60) == 1, process.output()
    assert "error: the gRPC server cannot listen" in process.output() and "Traceback" not in process.output()


def test_sigterm_finishes_the_rpc_in_flight_and_refuses_new_ones(start_server, scene_images: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    process = start_server(DETECTOR_GRPC_PORT=str(port), DETECTOR_MAX_BATCH_WAIT_MS="1000", DETECTOR_SHUTDOWN_GRACE_S="20")
    http = process.wait_ready()
    with triton.InferenceServerClient(url=f"127.0.0.1:{port}") as client:
        expected = client.infer("shapes", [images_input(scene_images[:1])]).as_numpy("boxes")
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(client.infer, "shapes", [images_input(scene_images[:1])])
            while value(scrape(http), "detector_queue_depth") < 1:  # the RPC waits in the 1 s batch window
                time.sleep(0.01)
            process.process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert not in_flight.done(), f"the RPC ended before the signal or with it: {in_flight.exception()}"
            error = refusal(client.infer, "shapes", [images_input(scene_images[:1])], client_timeout=10)
            assert error.status() == "StatusCode.UNAVAILABLE", error
            np.testing.assert_array_equal(in_flight.result(timeout=30).as_numpy("boxes"), expected)
    assert process.process.wait(timeout=30) == 0, process.output()
