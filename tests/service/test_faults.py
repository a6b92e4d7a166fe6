"""Faults: an engine that raises, broken model packages, and a server killed outright.

The engine faults are injected into a real server (uvicorn on a loopback port, in a thread of
this process, so that the test can switch the fault on and off); everything else runs
`python -m service` as its own process.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

import service.detector
from bench.servers import ServerProcess, free_port, wait_until
from service.engines import create_engine
from service.engines.base import BatchOutput, Engine, EngineInfo
from service.main import create_app
from service.settings import Settings
from tests.service.readings import scrape, statuses, value


class FaultyEngine:
    """The real engine, raising while ``failing`` is set."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.max_batch = engine.max_batch
        self.failing = False

    def run(self, images: np.ndarray, score_threshold: float, iou_threshold: float) -> BatchOutput:
        if self.failing:
            raise RuntimeError("injected fault: the device fell off the bus")
        return self.engine.run(images, score_threshold, iou_threshold)

    def describe(self) -> EngineInfo:
        return self.engine.describe()


@pytest.fixture
def faulty_server(small_package: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[httpx.Client, FaultyEngine]]:
    engines: list[FaultyEngine] = []

    def create_faulty(settings: Settings, manifest: Any) -> FaultyEngine:
        engines.append(FaultyEngine(create_engine(settings, manifest)))
        return engines[-1]

    monkeypatch.setattr(service.detector, "create_engine", create_faulty)
    settings = Settings(model_dir=small_package, intra_op_threads=1, max_batch_wait_ms=0, unhealthy_after_failures=3, recovery_probe_s=1.0)  # type: ignore[call-arg]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    wait_until(lambda: _status(client, "/health/ready") == 200, 60, "the server ready")
    yield client, engines[0]
    client.close()
    server.should_exit = True
    thread.join(timeout=30)


def _status(client: httpx.Client, path: str) -> int:
    try:
        return client.get(path).status_code
    except httpx.TransportError:
        return 0


def _detect(client: httpx.Client, image: bytes) -> httpx.Response:
    return client.post("/detect", content=image, headers={"Content-Type": "image/png"})


def _assert_inference_failed(response: httpx.Response) -> None:
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "/problems/inference-failed"
    assert "RuntimeError" in response.json()["detail"]


def test_a_failing_batch_fails_its_requests_and_the_next_batch_succeeds(
    faulty_server: tuple[httpx.Client, FaultyEngine], scene_images: list[bytes]
) -> None:
    client, engine = faulty_server
    expected = _detect(client, scene_images[1]).json()["detections"]
    engine.failing = True
    _assert_inference_failed(_detect(client, scene_images[1]))
    engine.failing = False
    response = _detect(client, scene_images[1])
    assert response.status_code == 200 and response.json()["detections"] == expected
    assert _status(client, "/health/ready") == 200, "one failure is not a broken engine"


def test_repeated_failures_turn_readiness_false_until_a_probe_succeeds(
    faulty_server: tuple[httpx.Client, FaultyEngine], scene_images: list[bytes]
) -> None:
    client, engine = faulty_server
    engine.failing = True
    for _ in range(3):
        _assert_inference_failed(_detect(client, scene_images[3]))
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.headers["content-type"] == "application/problem+json"
    families = scrape(client)
    assert value(families, "detector_ready") == 0
    assert value(families, "detector_inference_failures", "detector_inference_failures_total") >= 3  # and any probe that failed since
    assert statuses(families).get("500") == 3
    assert client.get("/health/live").status_code == 200, "the process itself is fine: no restart needed"

    engine.failing = False  # the fault clears: the next probe (every second) finds the engine well
    wait_until(lambda: _status(client, "/health/ready") == 200, 30, "readiness back after the fault cleared")
    assert value(scrape(client), "detector_ready") == 1
    assert _detect(client, scene_images[3]).status_code == 200


# Broken packages: the server must refuse to start, naming the problem, and never report ready.


def _broken_copy(small_package: Path, tmp_path: Path, edit: Callable[[Path, dict[str, Any]], None]) -> Path:
    package = tmp_path / "package"
    shutil.copytree(small_package, package)
    manifest = json.loads((package / "model.json").read_text())
    edit(package, manifest)
    (package / "model.json").write_text(json.dumps(manifest))
    return package


def _garbage_graph(package: Path, manifest: dict[str, Any]) -> None:
    from service.manifest import sha256_of

    (package / "model.onnx").write_bytes(b"\x08\x07this is not a protobuf" * 100)
    manifest["onnx_sha256"] = sha256_of(package / "model.onnx")  # the hash matches: ONNX Runtime itself must refuse


def _flipped_byte(package: Path, manifest: dict[str, Any]) -> None:
    data = bytearray((package / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (package / "model.onnx").write_bytes(bytes(data))


def _renamed_output(package: Path, manifest: dict[str, Any]) -> None:
    manifest["outputs"][2]["name"] = "confidences"


def _wrong_dtype(package: Path, manifest: dict[str, Any]) -> None:
    manifest["inputs"][0]["dtype"] = "float32"


def _missing_graph(package: Path, manifest: dict[str, Any]) -> None:
    (package / "model.onnx").unlink()


def _canvas_unlike_the_graph(package: Path, manifest: dict[str, Any]) -> None:
    manifest["canvas"] = [256, 256]


def _not_json(package: Path, manifest: dict[str, Any]) -> None:
    manifest.clear()
    manifest["name"] = "half a manifest"


@pytest.mark.parametrize(
    ("edit", "exit_code", "message"),
    [
        (_garbage_graph, 3, "ONNX Runtime cannot load this graph"),
        (_flipped_byte, 3, "SHA-256 differs from the manifest"),
        (_renamed_output, 3, "the manifest's output 'confidences' is not in the graph"),
        (_wrong_dtype, 3, "input 'images' is uint8"),
        (_missing_graph, 3, "it is missing"),
        (_canvas_unlike_the_graph, 2, "does not match canvas [256, 256]"),
        (_not_json, 2, "not a valid model manifest"),
    ],
)
def test_a_broken_package_stops_the_server_naming_the_problem(
    small_package: Path,
    tmp_path: Path,
    start_server: Callable[..., ServerProcess],
    edit: Callable[[Path, dict[str, Any]], None],
    exit_code: int,
    message: str,
) -> None:
    server = start_server(DETECTOR_MODEL_DIR=str(_broken_copy(small_package, tmp_path, edit)))
    ever_ready = False
    with httpx.Client(base_url=server.url) as client:
        while server.process.poll() is None:
            ever_ready |= _status(client, "/health/ready") == 200
            time.sleep(0.05)
    output = server.output()
    assert server.process.returncode == exit_code, output
    assert message in output, output
    assert "model.onnx" in output or "model.json" in output
    assert not ever_ready, "a broken model must never be reported ready"


def test_a_killed_server_restarts_ready_on_the_same_port(start_server: Callable[..., ServerProcess], scene_images: list[bytes]) -> None:
    first = start_server()
    client = first.wait_ready()
    sending = threading.Thread(target=lambda: [_detect_ignoring_errors(client, image) for image in scene_images * 4])
    sending.start()
    time.sleep(0.3)
    first.process.send_signal(signal.SIGKILL)  # no drain, no clean-up: as an OOM kill or a node failure would
    assert first.process.wait(timeout=30) == -signal.SIGKILL
    sending.join(timeout=60)

    restarted = start_server(port=first.port).wait_ready(timeout_s=90)
    response = _detect(restarted, scene_images[1])
    assert response.status_code == 200 and response.json()["model"]["name"] == "shapes"


def _detect_ignoring_errors(client: httpx.Client, image: bytes) -> None:
    with contextlib.suppress(httpx.TransportError):  # the server was killed under this request
        _detect(client, image)
