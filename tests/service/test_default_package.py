"""The README's first command: the server on the embedded default model, with no settings at all."""

from __future__ import annotations

import os

from model_export.synth import CATEGORIES, generate_image
from tests.service.helpers import ServerProcess, png_bytes


def test_the_default_model_serves_out_of_the_box() -> None:
    assert not any(key.startswith("DETECTOR_") for key in os.environ), "run the tests without DETECTOR_* settings"
    server = ServerProcess({})  # only host and port set: the model comes from the defaults
    try:
        client = server.wait_ready()
        image, objects = generate_image(seed=2024, index=5, empty_fraction=0.0)
        response = client.post("/detect", content=png_bytes(image), headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"]["name"] == "default"
        assert len(body["detections"]) >= max(1, len(objects) // 2), (body["detections"], objects)
        assert {d["class_name"] for d in body["detections"]} <= set(CATEGORIES)
    finally:
        server.stop()
