"""The KServe v2 / Open Inference Protocol, spoken to by the real Triton client (tritonclient[http] from PyPI)."""

from __future__ import annotations

import base64
import gzip
import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from bench.servers import ServerProcess
from model_export.synth import generate_image
from service.main import create_app
from service.settings import Settings
from tests.service.helpers import png_bytes, serving, start_service

OUTPUTS = ["num_detections", "boxes", "scores", "labels"]
HEADER_LENGTH = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server(small_package: Path) -> Iterator[ServerProcess]:
    """One real server for the module; a long batch window so that one request's images share a graph run."""
    with serving(small_package, DETECTOR_MAX_BATCH_WAIT_MS="300") as process:
        yield process


@pytest.fixture(scope="module")
def triton_client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    triton_client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=120)
    yield triton_client
    triton_client.close()


def images_input(images: list[bytes], binary: bool = True, shape: list[int] | None = None) -> triton.InferInput:
    data = np.array(images if binary else [base64.b64encode(image) for image in images], dtype=np.object_)
    tensor = triton.InferInput("images", shape or [len(images)], "BYTES")
    return tensor.set_data_from_numpy(data.reshape(shape or [len(images)]), binary_data=binary)


def detect(http: httpx.Client, image: bytes, score: float, iou: float) -> list[dict]:
    response = http.post(f"/detect?score_threshold={score}&iou_threshold={iou}", content=image, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    detections: list[dict] = response.json()["detections"]
    return detections


def assert_equal_to_detect(result: triton.InferResult, expected: list[list[dict]]) -> None:
    """The v2 outputs hold each image's /detect detections, in order, padded with zeros to the largest count."""
    counts, boxes = result.as_numpy("num_detections"), result.as_numpy("boxes")
    scores, labels = result.as_numpy("scores"), result.as_numpy("labels")
    rows = max(len(detections) for detections in expected)
    assert counts.dtype == np.int64 and boxes.dtype == np.float32 and scores.dtype == np.float32 and labels.dtype == np.int64
    assert counts.tolist() == [len(detections) for detections in expected]
    assert boxes.shape == (len(expected), rows, 4) and scores.shape == labels.shape == (len(expected), rows)
    for index, detections in enumerate(expected):
        count = len(detections)
        want = np.array([[d["box"][k] for k in ("x1", "y1", "x2", "y2")] for d in detections], dtype=np.float32).reshape(count, 4)
        np.testing.assert_allclose(boxes[index, :count], want, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(scores[index, :count], [d["score"] for d in detections], rtol=1e-6, atol=1e-6)
        assert labels[index, :count].tolist() == [d["label"] for d in detections]
        assert not boxes[index, count:].any() and not scores[index, count:].any() and not labels[index, count:].any()


def batch_runs(http: httpx.Client) -> float:
    families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    return next(s.value for s in families["detector_batch_size"].samples if s.name.endswith("_count"))


def assert_error(error: pytest.ExceptionInfo[InferenceServerException], status: int, *words: str) -> None:
    assert error.value.status() == str(status), error.value
    message = str(error.value.message())
    assert all(word in message for word in words), message


# Health and metadata


def test_server_and_model_readiness(triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert (
        triton_client.is_model_ready("shapes") and triton_client.is_model_ready("default") and triton_client.is_model_ready("shapes", "7")
    )
    assert not triton_client.is_model_ready("other") and not triton_client.is_model_ready("shapes", "8")
    metadata = triton_client.get_server_metadata()
    assert metadata["name"] and "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_describes_the_signature(triton_client: triton.InferenceServerClient) -> None:
    metadata = triton_client.get_model_metadata("shapes")
    assert metadata["name"] == "shapes" and metadata["versions"] == ["7"] and metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [
        {"name": "num_detections", "datatype": "INT64", "shape": [-1]},
        {"name": "boxes", "datatype": "FP32", "shape": [-1, -1, 4]},
        {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
        {"name": "labels", "datatype": "INT64", "shape": [-1, -1]},
    ]
    assert triton_client.get_model_metadata("default", "7") == metadata
    with pytest.raises(InferenceServerException) as error:
        triton_client.get_model_metadata("shapes", "8")
    assert_error(error, 404, "version")


def test_model_config_gives_the_batching_as_perf_analyzer_reads_it(triton_client: triton.InferenceServerClient) -> None:
    config = triton_client.get_model_config("shapes")
    assert config["name"] == "shapes" and config["max_batch_size"] == 8
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 300_000
    assert config["dynamic_batching"]["preferred_batch_size"] == [8]
    assert config["input"] == [
        {"name": "images", "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1], "reshape": {"shape": []}}
    ]
    assert [(o["name"], o["data_type"]) for o in config["output"]] == [
        ("num_detections", "TYPE_INT64"),
        ("boxes", "TYPE_FP32"),
        ("scores", "TYPE_FP32"),
        ("labels", "TYPE_INT64"),
    ]
    assert json.loads(config["parameters"]["categories"]["string_value"]) == ["__background__", "class1", "class2", "class3"]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert triton_client.get_model_config("shapes", "7") == config


def test_unknown_model_is_404(triton_client: triton.InferenceServerClient, scene_images: list[bytes]) -> None:
    for call in (lambda: triton_client.get_model_metadata("other"), lambda: triton_client.infer("other", [images_input(scene_images[:1])])):
        with pytest.raises(InferenceServerException) as error:
            call()
        assert_error(error, 404, "unknown model 'other'")


# Inference


def test_infer_equals_detect_and_batches_the_images_together(
    triton_client: triton.InferenceServerClient, http: httpx.Client, scene_images: list[bytes]
) -> None:
    images = scene_images[:5]
    before = batch_runs(http)
    result = triton_client.infer("shapes", [images_input(images)], parameters={"score_threshold": 0.05, "iou_threshold": 0.6})
    runs = batch_runs(http) - before
    assert runs < len(images), "the request's images should share graph runs"
    expected = [detect(http, image, 0.05, 0.6) for image in images]
    assert any(expected), "the scenes should give detections at a low threshold"
    assert_equal_to_detect(result, expected)
    assert result.get_response()["model_name"] == "shapes" and result.get_response()["model_version"] == "7"


def test_json_data_equals_binary_data(triton_client: triton.InferenceServerClient, http: httpx.Client, scene_images: list[bytes]) -> None:
    images, parameters = scene_images[2:5], {"score_threshold": 0.1}
    binary = triton_client.infer("shapes", [images_input(images)], parameters=parameters)
    outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in OUTPUTS]
    as_json = triton_client.infer("shapes", [images_input(images, binary=False)], outputs=outputs, parameters=parameters)
    for name in OUTPUTS:
        np.testing.assert_array_equal(as_json.as_numpy(name), binary.as_numpy(name))
    # On the wire: a plain JSON request (no header length) gets a plain JSON answer.
    body = {"id": "req-1", "inputs": [{"name": "images", "datatype": "BYTES", "shape": [3], "data": as_base64(images)}]}
    response = http.post("/v2/models/shapes/infer", json={**body, "parameters": parameters})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert HEADER_LENGTH.lower() not in response.headers
    answer = response.json()
    assert answer["id"] == "req-1" and [o["name"] for o in answer["outputs"]] == OUTPUTS
    assert answer["outputs"][0] == {
        "name": "num_detections",
        "datatype": "INT64",
        "shape": [3],
        "data": binary.as_numpy("num_detections").tolist(),
    }


def as_base64(images: list[bytes]) -> list[str]:
    return [base64.b64encode(image).decode() for image in images]


def test_requested_outputs_come_in_their_order_and_form(triton_client: triton.InferenceServerClient, scene_images: list[bytes]) -> None:
    outputs = [triton.InferRequestedOutput("scores", binary_data=True), triton.InferRequestedOutput("num_detections", binary_data=False)]
    result = triton_client.infer("shapes", [images_input(scene_images[:2])], outputs=outputs, parameters={"score_threshold": 0.05})
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["scores", "num_detections"]
    assert "binary_data_size" in response["outputs"][0]["parameters"] and "data" in response["outputs"][1]
    assert result.as_numpy("scores").shape == (2, int(result.as_numpy("num_detections").max()))
    assert result.as_numpy("boxes") is None


def test_parameters_and_versions_as_detect_options(triton_client: triton.InferenceServerClient, scene_images: list[bytes]) -> None:
    image = [images_input(scene_images[3:4])]
    everything = triton_client.infer("shapes", image, parameters={"score_threshold": 0.05})
    count = int(everything.as_numpy("num_detections")[0])
    assert count >= 3
    capped = triton_client.infer("default", image, model_version="7", parameters={"score_threshold": 0.05, "max_detections": 2})
    np.testing.assert_array_equal(capped.as_numpy("scores")[0], everything.as_numpy("scores")[0, :2])
    name = ["__background__", "class1", "class2", "class3"][int(everything.as_numpy("labels")[0, 0])]
    kept = triton_client.infer("shapes", image, parameters={"score_threshold": 0.05, "classes": name})
    labels = kept.as_numpy("labels")[0, : int(kept.as_numpy("num_detections")[0])]
    assert labels.size and set(labels.tolist()) == {int(everything.as_numpy("labels")[0, 0])}


def test_shape_n_by_1_and_gzip_requests_are_served(triton_client: triton.InferenceServerClient, scene_images: list[bytes]) -> None:
    plain = triton_client.infer("shapes", [images_input(scene_images[:2])])
    column = triton_client.infer("shapes", [images_input(scene_images[:2], shape=[2, 1])], request_compression_algorithm="gzip")
    for name in OUTPUTS:
        np.testing.assert_array_equal(column.as_numpy(name), plain.as_numpy(name))


# Protocol errors


@pytest.mark.parametrize(
    ("make_input", "words"),
    [
        (lambda: triton.InferInput("images", [1], "FP32").set_data_from_numpy(np.zeros(1, np.float32)), ["datatype 'FP32'", "BYTES"]),
        (lambda: triton.InferInput("image", [1], "BYTES").set_data_from_numpy(np.array([b"x"], np.object_)), ["missing input 'images'"]),
        (lambda: triton.InferInput("images", [1, 2], "BYTES").set_data_from_numpy(np.array([[b"a", b"b"]], np.object_)), ["shape [1, 2]"]),
        (lambda: triton.InferInput("images", [9], "BYTES").set_data_from_numpy(np.array([b"x"] * 9, np.object_)), ["max_batch_size is 8"]),
        (lambda: triton.InferInput("images", [1], "BYTES").set_data_from_numpy(np.array([b"junk"], np.object_)), ["not an image"]),
    ],
    ids=["wrong-datatype", "missing-input", "bad-shape", "batch-too-large", "not-an-image"],
)
def test_invalid_inputs_get_protocol_errors(
    triton_client: triton.InferenceServerClient, make_input: Callable[[], triton.InferInput], words: list[str]
) -> None:
    with pytest.raises(InferenceServerException) as error:
        triton_client.infer("shapes", [make_input()])
    assert_error(error, 400, *words)


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({"score_threshold": 1.5}, ["score_threshold"]),
        ({"iou_threshold": "high"}, ["iou_threshold"]),
        ({"max_detections": 31}, ["max_detections", "30"]),
        ({"classes": "unicorn"}, ["unicorn"]),
    ],
)
def test_invalid_parameters_get_protocol_errors(
    triton_client: triton.InferenceServerClient, scene_images: list[bytes], parameters: dict, words: list[str]
) -> None:
    with pytest.raises(InferenceServerException) as error:
        triton_client.infer("shapes", [images_input(scene_images[:1])], parameters=parameters)
    assert_error(error, 400, *words)


# One rule for the options of both protocols: (/detect's query string, v2 parameters, words both errors hold).
SAME_BAD_OPTIONS = [
    ("classes=", {"classes": ""}, ["classes", "names no class"]),
    ("classes=,", {"classes": ","}, ["classes", "names no class"]),
    ("classes=%20,%20", {"classes": [" ", ""]}, ["classes", "names no class"]),
    ("classes=unicorn", {"classes": ["unicorn"]}, ["unknown class", "unicorn"]),
    ("score_threshold=1.5", {"score_threshold": 1.5}, ["score_threshold", "1"]),
    ("iou_threshold=-0.1", {"iou_threshold": -0.1}, ["iou_threshold", "0"]),
    ("score_threshold=nan", {"score_threshold": float("nan")}, ["score_threshold", "finite"]),
    ("max_detections=0", {"max_detections": 0}, ["max_detections", "1"]),
    ("max_detections=31", {"max_detections": 31}, ["max_detections", "30"]),
]


def v2_json_request(image: bytes, parameters: dict) -> bytes:
    tensor = {"name": "images", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode()]}
    return json.dumps({"inputs": [tensor], "parameters": parameters}).encode()


@pytest.mark.parametrize(("query", "parameters", "words"), SAME_BAD_OPTIONS, ids=[case[0] for case in SAME_BAD_OPTIONS])
def test_detect_and_v2_refuse_the_same_bad_options(
    http: httpx.Client, scene_images: list[bytes], query: str, parameters: dict, words: list[str]
) -> None:
    image = scene_images[0]
    detect = http.post(f"/detect?{query}", content=image, headers={"Content-Type": "image/jpeg"})
    assert detect.status_code == 422 and detect.headers["content-type"] == "application/problem+json", detect.text
    v2 = http.post("/v2/models/shapes/infer", content=v2_json_request(image, parameters))
    assert v2.status_code == 400 and set(v2.json()) == {"error"}, v2.text
    for word in words:
        assert word in detect.json()["detail"], (word, detect.json())
        assert word in v2.json()["error"], (word, v2.json())


def test_the_same_good_options_are_served_by_detect_and_v2(http: httpx.Client, scene_images: list[bytes]) -> None:
    """The control for the refusals above: the request they spoil is served by both, with the same detections."""
    image, jpeg = scene_images[0], {"Content-Type": "image/jpeg"}
    everything = http.post("/detect?score_threshold=0.05", content=image, headers=jpeg).json()["detections"]
    kept = everything[0]["class_name"]
    detect = http.post(f"/detect?classes=%20{kept},&score_threshold=0.05", content=image, headers=jpeg)
    v2 = http.post("/v2/models/shapes/infer", content=v2_json_request(image, {"classes": [f" {kept}"], "score_threshold": 0.05}))
    assert detect.status_code == 200 and v2.status_code == 200, (detect.text, v2.text)
    labels = [row["label"] for row in detect.json()["detections"]]
    outputs = {output["name"]: output["data"] for output in v2.json()["outputs"]}
    assert outputs["num_detections"] == [len(labels)] and outputs["labels"] == labels
    assert labels and set(labels) == {everything[0]["label"]}


def binary_request(images: list[bytes], declared_size: int | None = None) -> tuple[bytes, int]:
    data = b"".join(struct.pack("<I", len(image)) + image for image in images)
    size = len(data) if declared_size is None else declared_size
    header = json.dumps(
        {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(images)], "parameters": {"binary_data_size": size}}]}
    ).encode()
    return header + data, len(header)


def test_malformed_bodies_get_error_json(http: httpx.Client, scene_images: list[bytes]) -> None:
    body, header_length = binary_request(scene_images[:1])
    wrong_size, wrong_length = binary_request(scene_images[:1], declared_size=10)
    cases = [
        (b"{not json", {}, "not JSON"),
        (body, {HEADER_LENGTH: str(len(body) + 1)}, HEADER_LENGTH),
        (body, {}, "not JSON"),  # binary data without the header length
        (body[:-5], {HEADER_LENGTH: str(header_length)}, "binary_data_size"),
        (wrong_size, {HEADER_LENGTH: str(wrong_length)}, "binary_data_size 10"),
        (json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}).encode(), {}, "base64"),
        (json.dumps({"inputs": []}).encode(), {}, "missing input 'images'"),
        (body, {HEADER_LENGTH: str(header_length), "Content-Encoding": "br"}, "Content-Encoding 'br'"),
        (json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [0], "data": []}]}).encode(), {}, "no image"),
    ]
    for content, headers, words in cases:
        response = http.post("/v2/models/shapes/infer", content=content, headers=headers)
        assert response.status_code == 400, (words, response.text)
        assert response.headers["content-type"] == "application/json" and set(response.json()) == {"error"}
        assert words in response.json()["error"], (words, response.json())
    ok = http.post("/v2/models/shapes/infer", content=body, headers={HEADER_LENGTH: str(header_length)})
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/json"  # no binary output asked for
    assert http.get("/v2/health/ready").status_code == 200


def test_body_over_the_limit_is_413_compressed_or_not(make_client: Callable[..., TestClient], scene_images: list[bytes]) -> None:
    body, header_length = binary_request(scene_images[:1])
    client = make_client(max_body_bytes=len(body) - 1)
    headers = {HEADER_LENGTH: str(header_length)}
    response = client.post("/v2/models/shapes/infer", content=body, headers=headers)
    assert response.status_code == 413 and set(response.json()) == {"error"}
    # A small gzip body that inflates past the limit (a compression bomb) is refused as well.
    bomb = gzip.compress(bytes(10 * len(body)))
    response = client.post("/v2/models/shapes/infer", content=bomb, headers={**headers, "Content-Encoding": "gzip"})
    assert response.status_code == 413 and "decompressed" in response.json()["error"]


def test_a_passed_deadline_is_504(triton_client: triton.InferenceServerClient, scene_images: list[bytes]) -> None:
    with pytest.raises(InferenceServerException) as error:
        triton_client.infer("shapes", [images_input(scene_images[:1])], timeout=1)  # Triton's timeout: microseconds
    assert_error(error, 504, "deadline")


def test_health_and_infer_before_the_model_is_loaded(small_package: Path, scene_images: list[bytes]) -> None:
    app = create_app(Settings(model_dir=small_package))  # type: ignore[call-arg]
    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: the model never loads
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2").status_code == 200
    assert_unready_with_the_same_reason(client, "the model is loading")
    assert client.get("/v2/models/shapes/ready").json() == {"error": "the model is loading"}
    body, header_length = binary_request(scene_images[:1])
    response = client.post("/v2/models/shapes/infer", content=body, headers={HEADER_LENGTH: str(header_length)})
    assert response.status_code == 503 and response.headers["retry-after"] and set(response.json()) == {"error"}


def test_a_draining_server_says_why_it_is_unready_in_both_protocols(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    assert client.get("/v2/health/ready").status_code == 200 and client.get("/health/ready").status_code == 200
    client.app.state.repository.begin_drain()  # type: ignore[attr-defined]
    assert_unready_with_the_same_reason(client, "draining")
    assert "draining" in client.get("/v2/models/shapes/versions/7/ready").json()["error"]


def assert_unready_with_the_same_reason(client: TestClient, words: str) -> None:
    """/health/ready's 503 problem and v2's 400 {"error"} give the same reason (one readiness answer for both)."""
    problem, v2 = client.get("/health/ready"), client.get("/v2/health/ready")
    assert problem.status_code == 503 and v2.status_code == 400, (problem.text, v2.text)
    assert words in problem.json()["detail"] and v2.json() == {"error": problem.json()["detail"]}


def test_infer_on_the_default_model_equals_detect() -> None:
    """The embedded default model (trained, so busy scenes give real detections) through tritonclient."""
    images = [png_bytes(generate_image(seed=2024, index=index, empty_fraction=0.0)[0]) for index in range(4)]
    server = start_service({"DETECTOR_INTRA_OP_THREADS": "1"})  # the model comes from the defaults
    try:
        http = server.wait_ready()
        client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=120)
        result = client.infer("default", [images_input(images)], parameters={"score_threshold": 0.5, "iou_threshold": 0.5})
        client.close()
        expected = [detect(http, image, 0.5, 0.5) for image in images]
        assert all(expected), "the trained model should find shapes in every busy scene"
        assert_equal_to_detect(result, expected)
    finally:
        server.close()
