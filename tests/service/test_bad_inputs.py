"""The bad-input corpus (tests/service/corpus.py) against one real server: each kind gets its documented answer.

The whole corpus goes to one `python -m service` process over loopback, once;
each kind is then checked on its own answer: its status, and for an error a
problem JSON body of the documented type, never a 500. Afterwards the server
must be as it was: ready, its memory not grown by much, and a good image
still getting the detections it got before.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image, ImageOps

from bench.servers import ServerProcess
from tests.service import corpus
from tests.service.corpus import Kind
from tests.service.helpers import png_bytes
from tests.service.readings import scrape, statuses, value

PROBLEM_JSON = "application/problem+json"
MAX_MEMORY_GROWTH = 100 * 1024 * 1024
LOW_SCORE = "score_threshold=0.05"  # low enough that the random test model finds objects in a scene


@dataclass(frozen=True)
class CorpusRun:
    """The server's answer to each kind, with what a good image got and the server's memory before and after."""

    answers: dict[str, httpx.Response]
    detections_before: list[dict]
    memory_before: float
    memory_after: float


@pytest.fixture(scope="module")
def corpus_run(server: ServerProcess, http: httpx.Client) -> CorpusRun:
    detections_before = detect(http, corpus.good_png(), "image/png", LOW_SCORE)["detections"]
    memory_before = resident_memory(http)
    # A connection per kind: after a fault (a 500) the server drops the connection, which would fail the next kind instead.
    with httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as fresh:
        answers = {kind.name: send(fresh, kind) for kind in corpus.corpus()}
    return CorpusRun(answers, detections_before, memory_before, resident_memory(http))


def send(http: httpx.Client, kind: Kind) -> httpx.Response:
    headers = {"Content-Type": kind.content_type} if kind.content_type is not None else {}
    return http.post(kind.path, content=kind.body, headers=headers)


def detect(http: httpx.Client, image: bytes, media_type: str, query: str = "") -> dict:
    response = http.post(f"/detect?{query}", content=image, headers={"Content-Type": media_type})
    assert response.status_code == 200, response.text
    body: dict = response.json()
    return body


def resident_memory(http: httpx.Client) -> float:
    return value(scrape(http), "process_resident_memory_bytes")


def test_the_corpus_holds_every_kind_the_issue_lists() -> None:
    names = {kind.name for kind in corpus.corpus()}
    assert len(names) >= 30
    for format in corpus.FORMATS:
        assert {f"{format} truncated at {cut}" for cut in ("10%", "50%", "90%", "header only")} <= names
        assert f"{format} with corrupted magic" in names


@pytest.mark.parametrize("kind", corpus.corpus(), ids=lambda kind: kind.name)
def test_each_kind_gets_its_documented_answer(corpus_run: CorpusRun, kind: Kind) -> None:
    response = corpus_run.answers[kind.name]
    assert response.status_code == kind.status, response.text
    if kind.status == 200:
        assert_detections(response)
    else:
        assert_problem(response, kind)


def assert_detections(response: httpx.Response) -> None:
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"model", "image", "detections", "timing_ms"}
    width, height = body["image"]["width"], body["image"]["height"]
    assert width >= 1 and height >= 1
    for detection in body["detections"]:
        box = detection["box"]
        assert 0 <= box["x1"] <= box["x2"] <= width and 0 <= box["y1"] <= box["y2"] <= height


def assert_problem(response: httpx.Response, kind: Kind) -> None:
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert set(body) == {"type", "title", "status", "detail"}
    assert body["status"] == kind.status and body["type"] == kind.problem_type
    assert body["title"] and body["detail"]
    if kind.detail_has is not None:
        assert kind.detail_has in body["detail"], body["detail"]


def test_the_server_is_unchanged_by_the_corpus(http: httpx.Client, corpus_run: CorpusRun) -> None:
    assert http.get("/health/ready").status_code == 200
    growth = corpus_run.memory_after - corpus_run.memory_before
    assert growth < MAX_MEMORY_GROWTH, f"resident memory grew by {growth / 2**20:.0f} MiB over the corpus"
    after = detect(http, corpus.good_png(), "image/png", LOW_SCORE)["detections"]
    assert corpus_run.detections_before, "the good image should have detections"
    assert_same_detections(after, corpus_run.detections_before)
    assert not [status for status in statuses(scrape(http)) if status.startswith("5")]


def assert_same_detections(got: list[dict], want: list[dict], box_tolerance: float = 1e-2) -> None:
    assert [d["label"] for d in got] == [d["label"] for d in want]
    for a, b in zip(got, want, strict=True):
        assert abs(a["score"] - b["score"]) < 1e-4
        assert all(abs(a["box"][k] - b["box"][k]) <= box_tolerance for k in ("x1", "y1", "x2", "y2")), (a, b)


@pytest.mark.parametrize(("orientation", "damaged"), [*((o, False) for o in range(1, 9)), (6, True)])
def test_boxes_come_back_in_the_exif_upright_frame(http: httpx.Client, orientation: int, damaged: bool) -> None:
    """A JPEG with EXIF orientation o gets the detections of its pixels turned upright by Pillow, sent without EXIF.

    ImageOps.exif_transpose raises on a damaged EXIF block: the reference is then its undamaged twin's (the same pixels).
    """
    jpeg = corpus.exif_oriented_jpeg(orientation, damaged)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(corpus.exif_oriented_jpeg(orientation))))
    assert upright.size == corpus.scene().size
    oriented = detect(http, jpeg, "image/jpeg", LOW_SCORE)
    reference = detect(http, png_bytes(upright), "image/png", LOW_SCORE)
    assert oriented["image"] == reference["image"] == {"width": upright.width, "height": upright.height}
    assert reference["detections"], "the upright scene should have detections"
    assert_same_detections(oriented["detections"], reference["detections"], box_tolerance=2.0)


@pytest.mark.parametrize("format", ["GIF", "WEBP"])
def test_an_animation_is_read_by_its_first_frame(http: httpx.Client, format: str) -> None:
    animation = corpus.animation(format)
    frames = Image.open(io.BytesIO(animation))
    first = png_bytes(frames.convert("RGB"))
    frames.seek(1)
    second = png_bytes(frames.convert("RGB"))
    got = detect(http, animation, f"image/{format.lower()}", LOW_SCORE)["detections"]
    want = detect(http, first, "image/png", LOW_SCORE)["detections"]
    assert want, "the first frame should have detections"
    assert_same_detections(got, want)
    assert got != detect(http, second, "image/png", LOW_SCORE)["detections"], "the frames should tell apart"
