"""The README's first command: the server on the embedded default model, with no settings at all.

The default model is good on the synthetic scenes (mAP@.5 about 0.9, models/default/README.md), so its
served boxes can be held to the scenes' ground truth: that checks the whole way back from canvas to image pixels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.servers import ServerProcess, service_spec
from model_export.synth import CATEGORIES, generate_image
from service.agreement import box_iou
from tests.service.helpers import png_bytes

# Each scene goes out smaller and larger than the 320 x 320 canvas: the letterbox scales them by 4/3 and by 1/2.
SIZE_FACTORS = (0.75, 2.0)
SCENES = range(8)  # 37 objects; at the manifest's score threshold the model finds 29 of them at both sizes
SEED = 2024


@pytest.fixture(scope="module")
def default_process() -> Iterator[ServerProcess]:
    assert not any(key.startswith("DETECTOR_") for key in os.environ), "run the tests without DETECTOR_* settings"
    with ServerProcess(service_spec({})) as server:  # only host and port set: the model comes from the defaults
        yield server


@pytest.fixture(scope="module")
def default_server(default_process: ServerProcess) -> httpx.Client:
    return default_process.http


def _detect(client: httpx.Client, image: Image.Image) -> dict:
    response = client.post("/detect", content=png_bytes(image), headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    return response.json()


def _boxes(detections: list[dict]) -> np.ndarray:
    """x1, y1, x2, y2 (ndarray[N, 4]) of the served detections."""
    return np.array([[d["box"][k] for k in ("x1", "y1", "x2", "y2")] for d in detections], dtype=np.float64).reshape(-1, 4)


def _found(truth: np.ndarray, truth_labels: np.ndarray, detections: list[dict]) -> int:
    """Ground-truth boxes that a served detection of the same class overlaps with IoU >= 0.5."""
    if not len(truth) or not detections:
        return 0
    labels = np.array([d["label"] for d in detections])
    iou = box_iou(truth, _boxes(detections)) * (truth_labels[:, None] == labels[None, :])
    return int((iou.max(axis=1) >= 0.5).sum())


def test_the_default_model_serves_out_of_the_box(default_server: httpx.Client) -> None:
    image, objects = generate_image(seed=SEED, index=5, empty_fraction=0.0)
    body = _detect(default_server, image)
    assert body["model"]["name"] == "default"
    assert len(body["detections"]) >= max(1, len(objects) // 2), (body["detections"], objects)
    assert {d["class_name"] for d in body["detections"]} <= set(CATEGORIES)


def test_served_boxes_find_the_ground_truth_in_image_pixels_at_every_size(default_server: httpx.Client) -> None:
    found, total = dict.fromkeys(SIZE_FACTORS, 0), 0
    for index in SCENES:
        image, objects = generate_image(seed=SEED, index=index, empty_fraction=0.0)
        truth = np.array([[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objects)], dtype=np.float64).reshape(-1, 4)
        labels = np.array([o["category_id"] for o in objects])
        total += len(objects)
        for factor in SIZE_FACTORS:
            size = (round(image.width * factor), round(image.height * factor))
            body = _detect(default_server, image.resize(size, Image.Resampling.BILINEAR))
            assert body["image"] == {"width": size[0], "height": size[1]}
            scale = np.array([size[0] / image.width, size[1] / image.height] * 2)
            found[factor] += _found(truth * scale, labels, body["detections"])
    assert total >= 30, "too few objects to judge"
    assert all(count >= 0.7 * total for count in found.values()), f"found {found} of {total} objects"


def test_served_boxes_scale_with_the_image(default_server: httpx.Client) -> None:
    # Both sizes land on the canvas as nearly the same picture, so the same objects come back at their own scale.
    image, _ = generate_image(seed=SEED, index=1, empty_fraction=0.0)
    small, large = (
        _detect(default_server, image.resize((round(image.width * f), round(image.height * f)), Image.Resampling.BILINEAR))
        for f in SIZE_FACTORS
    )
    assert len(small["detections"]) >= 3, small
    ratio = SIZE_FACTORS[1] / SIZE_FACTORS[0]
    iou = box_iou(_boxes(small["detections"]) * ratio, _boxes(large["detections"]))
    assert (iou.max(axis=1) >= 0.9).all(), np.round(iou.max(axis=1), 3)


def test_the_default_server_says_what_it_chose_and_why(default_process: ServerProcess) -> None:
    """DETECTOR_ENGINE and DETECTOR_PRECISION left to auto: the engine is chosen on this machine, in /v1/models and the log."""
    runtime = default_process.http.get("/v1/models/default").json()["runtime"]
    choice = runtime["choice"]
    assert choice["by"] == "auto" and choice["reason"]
    assert runtime["engine"] == choice["engine"]
    assert runtime["precision"] == {"f32": "fp32", "int8": "int8", "bf16": "bf16"}[choice["precision"]]
    chosen = [trial for trial in choice["trials"] if trial["outcome"] == "chosen"]
    if choice["precision"] != "f32":  # a reduced precision is served only after it passed here
        assert len(chosen) == 1 and chosen[0]["recall"] >= 0.95 and chosen[0]["ms_per_image"] < chosen[0]["float_ms_per_image"]
    else:
        assert chosen == []
    assert "engine chosen" in default_process.output() and choice["reason"] in default_process.output()
