"""The HTTP API through TestClient (the lifespan runs; a real ONNX Runtime session serves)."""

from __future__ import annotations

import io
import struct
import threading
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.service.helpers import png_bytes, solid_image

PROBLEM = "application/problem+json"


def _assert_problem(response, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert set(body) == {"type", "title", "status", "detail"} and body["status"] == status
    return body


def test_detect_raw_body_returns_boxes_in_image_pixels(client: TestClient, scene_images: list[bytes]) -> None:
    response = client.post("/detect?score_threshold=0.05", content=scene_images[1], headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    width, height = Image.open(io.BytesIO(scene_images[1])).size
    assert body["model"] == {"name": "shapes", "version": "7"}
    assert body["image"] == {"width": width, "height": height}
    assert body["detections"], "a scene at a low threshold should give detections"
    scores = [d["score"] for d in body["detections"]]
    assert scores == sorted(scores, reverse=True) and min(scores) > 0.05
    for detection in body["detections"]:
        box = detection["box"]
        assert 0 <= box["x1"] <= box["x2"] <= width and 0 <= box["y1"] <= box["y2"] <= height
        assert detection["class_name"] == ["__background__", "class1", "class2", "class3"][detection["label"]]
    assert set(body["timing_ms"]) == {"queue", "inference", "total"}


def test_detect_multipart_equals_raw_body(client: TestClient, scene_images: list[bytes]) -> None:
    raw = client.post("/detect?score_threshold=0.1", content=scene_images[0], headers={"Content-Type": "image/jpeg"}).json()
    form = client.post("/detect?score_threshold=0.1", files={"image": ("scene.jpg", scene_images[0], "image/jpeg")}).json()
    assert form["detections"] == raw["detections"]


def test_query_options_filter_the_detections(client: TestClient, scene_images: list[bytes]) -> None:
    post = lambda query: client.post(f"/detect?{query}", content=scene_images[3], headers={"Content-Type": "image/png"}).json()  # noqa: E731
    everything = post("score_threshold=0.05")["detections"]
    assert len(everything) >= 3
    assert post("score_threshold=0.05&max_detections=2")["detections"] == everything[:2]
    only = everything[0]["class_name"]
    kept = post(f"score_threshold=0.05&classes={only}")["detections"]
    assert kept and all(d["class_name"] == only for d in kept)
    cut = everything[len(everything) // 2]["score"]
    assert post(f"score_threshold={cut}")["detections"] == [d for d in everything if d["score"] > cut]


def test_exif_orientation_is_applied(client: TestClient) -> None:
    image = solid_image(200, 100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the upright image is 100 x 200
    response = client.post("/detect", content=png_bytes(image, "JPEG", exif=exif), headers={"Content-Type": "image/jpeg"})
    assert response.json()["image"] == {"width": 100, "height": 200}


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "1"])
def test_any_pixel_mode_is_served(client: TestClient, mode: str) -> None:
    image = solid_image(64, 48).convert(mode) if mode != "I;16" else Image.new("I;16", (64, 48), 300)
    format = "JPEG" if mode == "CMYK" else "PNG"
    response = client.post("/detect", content=png_bytes(image, format), headers={"Content-Type": f"image/{format.lower()}"})
    assert response.status_code == 200, response.text


def test_empty_body_is_a_bad_request(client: TestClient) -> None:
    _assert_problem(client.post("/detect", content=b"", headers={"Content-Type": "image/png"}), 400)


def test_bytes_that_are_not_an_image_are_refused(client: TestClient) -> None:
    body = _assert_problem(client.post("/detect", content=b"GIF89a but not really", headers={"Content-Type": "image/gif"}), 422)
    assert "not an image" in body["detail"]


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
def test_truncated_images_are_refused(client: TestClient, scene_images: list[bytes], format: str) -> None:
    data = scene_images[0] if format == "JPEG" else scene_images[1]
    body = _assert_problem(client.post("/detect", content=data[: len(data) // 2], headers={"Content-Type": "image/png"}), 422)
    assert "truncated" in body["detail"] or "damaged" in body["detail"]


def test_image_over_the_pixel_limit_is_413(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_image_pixels=100 * 100)
    _assert_problem(client.post("/detect", content=png_bytes(solid_image(101, 100)), headers={"Content-Type": "image/png"}), 413)


def test_decompression_bomb_is_refused_before_decoding(client: TestClient) -> None:
    # A PNG header that claims 100000 x 100000 pixels, with almost no data: refused from the header alone.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    _assert_problem(client.post("/detect", content=bomb, headers={"Content-Type": "image/png"}), 413)


def test_body_over_the_limit_is_413(make_client, scene_images: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_body_bytes=1000)
    _assert_problem(client.post("/detect", content=scene_images[0], headers={"Content-Type": "image/jpeg"}), 413)


def test_chunked_body_over_the_limit_is_413(make_client, scene_images: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    client = make_client(max_body_bytes=1000)
    stream = (scene_images[0][i : i + 500] for i in range(0, len(scene_images[0]), 500))
    _assert_problem(client.post("/detect", content=stream, headers={"Content-Type": "image/jpeg"}), 413)


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "image/svg+xml", ""])
def test_unsupported_media_type_is_415(client: TestClient, content_type: str) -> None:
    _assert_problem(client.post("/detect", content=b"<svg/>", headers={"Content-Type": content_type}), 415)


@pytest.mark.parametrize(
    "query",
    [
        "score_threshold=1.5",
        "score_threshold=-0.1",
        "iou_threshold=2",
        "score_threshold=abc",
        "iou_threshold=nan",
        "max_detections=0",
        "max_detections=31",
        "max_detections=x",
        "classes=unicorn",
        "timeout_ms=0",
    ],
)
def test_invalid_parameters_are_422(client: TestClient, scene_images: list[bytes], query: str) -> None:
    _assert_problem(client.post(f"/detect?{query}", content=scene_images[0], headers={"Content-Type": "image/jpeg"}), 422)


def test_multipart_without_the_image_field_is_422(client: TestClient, scene_images: list[bytes]) -> None:
    body = _assert_problem(client.post("/detect", files={"picture": ("a.jpg", scene_images[0], "image/jpeg")}), 422)
    assert "'image'" in body["detail"]


def test_server_stays_healthy_after_bad_requests(client: TestClient, scene_images: list[bytes]) -> None:
    for bad in (b"", b"junk", scene_images[0][:100]):
        client.post("/detect", content=bad, headers={"Content-Type": "image/jpeg"})
    assert client.get("/health/ready").status_code == 200
    assert client.post("/detect", content=scene_images[0], headers={"Content-Type": "image/jpeg"}).status_code == 200


def test_health_model_and_request_id(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    assert client.get("/health/ready").json() == {"status": "ready"}
    for name in ("default", "shapes"):
        described = client.get(f"/v1/models/{name}").json()
        assert described["manifest"]["name"] == "shapes" and described["runtime"]["provider"] == "CPUExecutionProvider"
        assert described["runtime"]["max_batch_size"] == 8
    _assert_problem(client.get("/v1/models/other"), 404)
    response = client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    generated = client.get("/health/live", headers={"X-Request-ID": "bad id\n"}).headers["x-request-id"]
    assert generated != "bad id\n" and len(generated) == 32


def test_metrics_use_the_contracted_names(client: TestClient, scene_images: list[bytes]) -> None:
    client.post("/detect", content=scene_images[0], headers={"Content-Type": "image/jpeg"})
    client.post("/detect", content=b"junk", headers={"Content-Type": "image/jpeg"})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    expected = {
        "detector_requests",
        "detector_request_duration_seconds",
        "detector_queue_wait_seconds",
        "detector_inference_duration_seconds",
        "detector_batch_size",
        "detector_queue_depth",
        "detector_rejected",
        "detector_images",
        "detector_detections",
        "detector_ready",
        "detector_model_info",
        "process_resident_memory_bytes",
    }
    assert expected <= set(families), expected - set(families)
    requests = {
        (s.labels["route"], s.labels["status"]): s.value for s in families["detector_requests"].samples if s.name.endswith("_total")
    }
    assert requests[("/detect", "200")] == 1 and requests[("/detect", "422")] == 1
    assert [s.value for s in families["detector_ready"].samples] == [1.0]
    info = families["detector_model_info"].samples[0]
    assert info.labels == {"name": "shapes", "version": "7", "provider": "CPUExecutionProvider"}
    images = [s.value for s in families["detector_images"].samples if s.name == "detector_images_total"]
    assert images == [1.0]


class _StalledEngine:
    """Wraps the real engine; each run waits until released (fault injection: a slow model)."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.engine, self.max_batch = engine, engine.max_batch
        self.entered, self.release = threading.Event(), threading.Event()

    def run(self, *args):  # type: ignore[no-untyped-def]
        self.entered.set()
        self.release.wait(30)
        return self.engine.run(*args)

    def describe(self):  # type: ignore[no-untyped-def]
        return self.engine.describe()


def test_health_answers_while_the_model_is_busy(client: TestClient, scene_images: list[bytes]) -> None:
    batcher = client.app.state.repository.resolve(None, None).batcher  # type: ignore[attr-defined]
    stalled = _StalledEngine(batcher.engine)
    batcher.engine = stalled
    worker = threading.Thread(target=lambda: client.post("/detect", content=scene_images[0], headers={"Content-Type": "image/jpeg"}))
    worker.start()
    try:
        assert stalled.entered.wait(30), "the request never reached the engine"
        assert client.get("/health/live").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert worker.is_alive() and not stalled.release.is_set(), "health answered while inference was still running"
    finally:
        stalled.release.set()
        worker.join(30)


def test_a_deadline_in_the_header_is_honoured(client: TestClient, scene_images: list[bytes]) -> None:
    ok = client.post("/detect", content=scene_images[0], headers={"Content-Type": "image/jpeg", "X-Request-Timeout": "30"})
    assert ok.status_code == 200
    late = client.post("/detect", content=scene_images[0], headers={"Content-Type": "image/jpeg", "X-Request-Timeout": "0.000001"})
    _assert_problem(late, 504)
    _assert_problem(
        client.post("/detect", content=scene_images[0], headers={"Content-Type": "image/jpeg", "X-Request-Timeout": "soon"}), 422
    )
