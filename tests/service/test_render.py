"""Annotated images from POST /detect (Accept: image/png or image/jpeg, or render=true), over real HTTP to a real server."""

from __future__ import annotations

import io
import json
import threading

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from model_export.synth import generate_image
from service import render
from service.api.routes.detect import DETECTIONS_HEADER_BYTES, detections_headers, negotiate
from service.schemas import Box, Detection, DetectResponse, ImageSize, ModelRef, Timing
from tests.service.helpers import png_bytes
from tests.service.readings import scrape, value

PROBLEM_JSON = "application/problem+json"
SCENE = "score_threshold=0.05&max_detections=4"  # the random test model finds a few objects in a scene
TINY = png_bytes(Image.new("RGB", (8, 8)))


@pytest.fixture(scope="module")
def scene() -> bytes:
    image, _ = generate_image(seed=11, index=0)  # four boxes of proper size, apart, none on the image's edge
    return png_bytes(image)


def post(http: httpx.Client | TestClient, image: bytes, query: str = SCENE, accept: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream", **({"Accept": accept} if accept is not None else {})}
    return http.post(f"/detect?{query}", content=image, headers=headers)


def decoded(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def header_answer(response: httpx.Response) -> dict:
    answer: dict = json.loads(response.headers["X-Detections"])
    assert int(response.headers["X-Detections-Count"]) == len(answer["detections"])
    return answer


def without_timing(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key != "timing_ms"}


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/*", "text/html", "image/png;q=0.5, */*", "image/png;q=0"])
def test_json_stays_the_answer_unless_an_image_is_preferred(http: httpx.Client, scene: bytes, accept: str | None) -> None:
    response = post(http, scene, accept=accept)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["vary"] == "Accept" and "X-Detections" not in response.headers
    assert set(response.json()) == {"model", "image", "detections", "timing_ms"}


@pytest.mark.parametrize(
    ("query", "accept", "media_type"),
    [
        ("", "image/png", "image/png"),
        ("", "image/jpeg", "image/jpeg"),
        ("", "image/*", "image/png"),
        ("", "application/json;q=0.5, image/jpeg", "image/jpeg"),
        ("render=true", None, "image/png"),
        ("render=true", "*/*", "image/png"),
        ("render=true", "image/jpeg", "image/jpeg"),
        ("render=false", "image/png", "application/json"),
    ],
)
def test_accept_or_render_chooses_the_answer(http: httpx.Client, scene: bytes, query: str, accept: str | None, media_type: str) -> None:
    response = post(http, scene, f"{SCENE}&{query}" if query else SCENE, accept)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    if media_type != "application/json":
        assert decoded(response).format == render.MEDIA_TYPES[media_type]


@pytest.mark.parametrize("accept", ["image/png", "image/jpeg"])
def test_annotated_image_has_the_uploads_size_and_the_json_in_a_header(http: httpx.Client, scene: bytes, accept: str) -> None:
    answer = post(http, scene).json()
    assert answer["detections"], "the scene should give detections"
    rendered = post(http, scene, accept=accept)
    assert decoded(rendered).size == Image.open(io.BytesIO(scene)).size == (answer["image"]["width"], answer["image"]["height"])
    assert without_timing(header_answer(rendered)) == without_timing(answer)
    assert set(header_answer(rendered)["timing_ms"]) == {"queue", "inference", "total"}


def test_annotated_image_is_upright_after_the_exif_orientation(http: httpx.Client) -> None:
    stored = np.zeros((60, 120, 3), dtype=np.uint8)
    stored[:, :40] = (250, 20, 20)  # a red band on the stored image's left: on the upright one's top
    stored[:, 40:] = (20, 20, 250)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: the upright image is 60 x 120
    upload = png_bytes(Image.fromarray(stored), "JPEG", quality=95, exif=exif)
    # No detection passes a threshold of 1, so the answer is the upright upload itself, pixel for pixel.
    rendered = post(http, upload, "score_threshold=1", accept="image/png")
    assert rendered.headers["X-Detections-Count"] == "0"
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(upload))).convert("RGB")
    assert decoded(rendered).size == upright.size == (60, 120)
    assert np.array_equal(np.asarray(decoded(rendered)), np.asarray(upright))


@pytest.mark.parametrize("count", [1, 4])
def test_boxes_are_drawn_where_the_json_says_and_nothing_else_changes(http: httpx.Client, scene: bytes, count: int) -> None:
    rendered = post(http, scene, f"score_threshold=0.05&max_detections={count}", accept="image/png")
    detections = header_answer(rendered)["detections"]
    assert len(detections) == count
    drawn = np.asarray(decoded(rendered)).astype(int)
    original = np.asarray(Image.open(io.BytesIO(scene)).convert("RGB")).astype(int)
    height, width = original.shape[:2]
    changed = (drawn != original).any(axis=2)
    near_a_box = np.zeros_like(changed)
    font = render.font_size(width, height)
    # The outline and the label: above the box (or inside it), and shifted left where the image's right edge is near.
    margin, wide = render.line_width(width, height) + 2 * font, 10 * font
    for detection in detections:
        box = detection["box"]
        ring = np.concatenate(list(outline_edges(drawn, box).values()))
        assert (ring != np.concatenate(list(outline_edges(original, box).values()))).any(axis=1).mean() > 0.5, detection
        x1, y1, x2, y2 = (round(box[name]) for name in ("x1", "y1", "x2", "y2"))
        near_a_box[max(y1 - margin, 0) : y2 + margin, max(x1 - wide, 0) : x2 + wide] = True
    top = detections[0]  # drawn last: each side of its outline is its class's colour, but where its own label sits
    for side, edge in outline_edges(drawn, top["box"]).items():
        assert (edge == render.colour(top["label"])).all(axis=1).mean() > 0.5, side
    assert (~near_a_box).sum() > 0.1 * width * height, "the test needs pixels away from every box"
    assert not changed[~near_a_box].any(), "pixels away from every box and label must be the upload's"


def test_each_class_has_its_colour_and_boxes_at_the_edges_stay_inside() -> None:
    grey = Image.new("RGB", (200, 120), (128, 128, 128))
    boxes = [(10.2, 40.0, 60.0, 90.0), (80.0, 0.0, 130.4, 50.0), (150.0, 70.0, 200.0, 120.0)]  # the last is clipped at both edges
    detections = [
        Detection(box=Box(x1=x1, y1=y1, x2=x2, y2=y2), score=0.9 - label / 10, label=label, class_name=f"class{label}")
        for label, (x1, y1, x2, y2) in enumerate(boxes, start=1)
    ]
    drawn = np.asarray(render.draw_detections(grey.copy(), detections)).astype(int)
    assert len({render.colour(label) for label in (1, 2, 3)}) == 3
    for detection in detections:
        for side, edge in outline_edges(drawn, detection.box.model_dump()).items():
            assert (edge == render.colour(detection.label)).all(axis=1).mean() > 0.5, (detection.class_name, side)
    assert (drawn[100:, :140] == 128).all() and (drawn[:30, :70] == 128).all(), "nothing drawn away from the boxes"


def outline_edges(pixels: np.ndarray, box: dict) -> dict[str, np.ndarray]:
    """The pixels [n, 3] of each side of a box's 1-pixel outline: its first and last rows and columns (x2 and y2 lie past
    its last pixel)."""
    height, width = pixels.shape[:2]
    left, top = min(round(box["x1"]), width - 1), min(round(box["y1"]), height - 1)
    right, bottom = max(left, min(round(box["x2"]) - 1, width - 1)), max(top, min(round(box["y2"]) - 1, height - 1))
    return {
        "left": pixels[top : bottom + 1, left],
        "right": pixels[top : bottom + 1, right],
        "top": pixels[top, left : right + 1],
        "bottom": pixels[bottom, left : right + 1],
    }


@pytest.mark.parametrize("asks_for_image", [{"accept": "image/png"}, {"accept": "image/jpeg"}, {"query": "render=true"}])
@pytest.mark.parametrize(
    ("body", "content_type", "query", "status"),
    [
        (b"", "image/png", "", 400),
        (b"this is not an image", "image/png", "", 422),
        (b"GIF89a\x10\x00", "image/gif", "", 422),
        (b"plain text", "text/plain", "", 415),
        (TINY, "image/png", "score_threshold=2", 422),
        (TINY, "image/png", "score_treshold=0.5", 422),
        (TINY, "image/png", "classes=nope", 422),
    ],
)
def test_bad_input_is_still_problem_json_when_an_image_is_asked_for(
    http: httpx.Client, asks_for_image: dict, body: bytes, content_type: str, query: str, status: int
) -> None:
    query = "&".join(part for part in (query, asks_for_image.get("query", "")) if part)
    headers = {"Content-Type": content_type, **({"Accept": asks_for_image["accept"]} if "accept" in asks_for_image else {})}
    response = http.post(f"/detect?{query}", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["status"] == status and response.json()["detail"]


def test_rendered_requests_are_counted_in_the_request_duration(http: httpx.Client, scene: bytes) -> None:
    duration = "detector_request_duration_seconds"
    before = scrape(http)
    answers = [header_answer(post(http, scene, accept=accept)) for accept in ("image/png", "image/jpeg", "image/png")]
    after = scrape(http)
    count = value(after, duration, f"{duration}_count", route="/detect") - value(before, duration, f"{duration}_count", route="/detect")
    seconds = value(after, duration, f"{duration}_sum", route="/detect") - value(before, duration, f"{duration}_sum", route="/detect")
    assert count == len(answers)
    # Each took at least its detection's own time, which the header reports; the drawing comes on top.
    assert seconds >= sum(answer["timing_ms"]["total"] for answer in answers) / 1000


def test_the_openapi_description_documents_the_images(http: httpx.Client) -> None:
    ok = http.get("/openapi.json").json()["paths"]["/detect"]["post"]["responses"]["200"]
    assert {"application/json", "image/png", "image/jpeg"} <= ok["content"].keys()
    assert {"X-Detections", "X-Detections-Count"} <= ok["headers"].keys()


def test_drawing_runs_on_the_decode_threads(client: TestClient, scene: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = render.render_image

    def recording(*args: object) -> bytes:
        threads.append(threading.current_thread().name)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr("service.detector.render_image", recording)
    assert post(client, scene, accept="image/png").status_code == 200
    assert len(threads) == 1 and threads[0].startswith("decode"), threads


@pytest.mark.parametrize(
    ("accept", "render_query", "expected"),
    [
        (None, None, "application/json"),
        ("", None, "application/json"),
        ("IMAGE/PNG", None, "image/png"),
        ("image/png;q=0.9, image/jpeg", None, "image/jpeg"),
        ("image/*;q=0.8, image/png;q=0.1, application/json;q=0.5", None, "image/jpeg"),
        ("image/png;q=nan, image/jpeg;q=abc", None, "application/json"),
        ("image/png;q=0, */*;q=0.1", None, "application/json"),
        (",,;;, image/png", None, "image/png"),
        ("text/html", True, "image/png"),
        ("image/png", False, "application/json"),
    ],
)
def test_negotiation_follows_rfc_9110_quality_values(accept: str | None, render_query: bool | None, expected: str) -> None:
    assert negotiate(accept, render_query) == expected


@pytest.mark.parametrize("name_length", range(1, 40, 3))
def test_detections_header_is_capped_at_whole_detections(name_length: int) -> None:
    rows = [
        Detection(box=Box(x1=i, y1=i, x2=i + 10.123456, y2=i + 20.5), score=1 - i / 1000, label=1, class_name="é" * name_length)
        for i in range(200)
    ]
    answer = DetectResponse(
        model=ModelRef(name="m", version="1"),
        image=ImageSize(width=640, height=480),
        detections=rows,
        timing_ms=Timing(queue=1, inference=2, total=3),
    )
    headers = detections_headers(answer)
    value_ = headers["X-Detections"]
    assert value_.isascii() and len(value_) <= DETECTIONS_HEADER_BYTES
    kept = json.loads(value_)["detections"]
    assert 0 < len(kept) < 200 and headers["X-Detections-Count"] == "200"
    assert kept == answer.model_dump(mode="json")["detections"][: len(kept)]
    following = answer.model_dump(mode="json")["detections"][len(kept)]
    assert len(value_) + len(json.dumps(following, separators=(",", ":"))) + 1 > DETECTIONS_HEADER_BYTES, "one more would fit"
    few = answer.model_copy(update={"detections": rows[:3]})
    assert json.loads(detections_headers(few)["X-Detections"]) == few.model_dump(mode="json")
