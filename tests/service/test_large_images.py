"""Large JPEGs are decoded at a reduced scale: their detections must still be the full-size image's."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model_export.synth import generate_image
from service.agreement import box_iou
from service.main import create_app
from service.settings import Settings
from tests.service.helpers import png_bytes, wait_ready


@pytest.fixture(scope="module")
def default_client():  # type: ignore[no-untyped-def]
    with TestClient(create_app(Settings())) as client:
        wait_ready(client)
        yield client


def _detect(client: TestClient, data: bytes, media: str) -> dict:
    response = client.post("/detect?score_threshold=0.5", content=data, headers={"Content-Type": media})
    assert response.status_code == 200, response.text
    return response.json()


def _boxes(body: dict) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.array([[d["box"][k] for k in ("x1", "y1", "x2", "y2")] for d in body["detections"]]).reshape(-1, 4)
    return boxes, np.array([d["label"] for d in body["detections"]])


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_large_jpeg_gives_the_detections_of_its_full_size_pixels(default_client: TestClient, orientation: int) -> None:
    scene, _ = generate_image(seed=99, index=3, empty_fraction=0.0)
    large = scene.resize((scene.width * 4, scene.height * 4), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = orientation
    jpeg = _detect(default_client, png_bytes(large, "JPEG", quality=95, exif=exif), "image/jpeg")
    reference_image = large.rotate(-90, expand=True) if orientation == 6 else large
    png = _detect(default_client, png_bytes(reference_image), "image/png")
    assert jpeg["image"] == png["image"] == {"width": reference_image.width, "height": reference_image.height}
    got, got_labels = _boxes(jpeg)
    want, want_labels = _boxes(png)
    assert len(want) >= 3
    iou = box_iou(want, got) * (want_labels[:, None] == got_labels[None, :]) if len(got) else np.zeros((len(want), 1))
    matched = (iou.max(axis=1) >= 0.9).mean()
    assert matched >= 0.9, (matched, jpeg["detections"], png["detections"])
