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
from prometheus_client.parser import text_string_to_metric_families

import service.detector
from service.engines import create_engine
from service.engines.base import BatchOutput, Engine
from service.main import create_app
from service.settings import Settings
from tests.service.helpers import ServerProcess, free_port


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

    def describe(self) -> dict[str, Any]:
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
    _wait_for(lambda: _status(client, "/health/ready") == 200, "the server did not become ready")
    yield client, engines[0]
    client.close()
    server.should_exit = True
    thread.join(timeout=30)


def _status(client: httpx.Client, path: str) -> int:
    try:
        return client.get(path).status_code
    except httpx.TransportError:
        return 0


def _wait_for(condition: Callable[[], bool], message: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(message)
        time.sleep(0.05)


def _detect(client: httpx.Client, image: bytes) -> httpx.Response:
    return client.post("/detect", content=image, headers={"Content-Type": "image/png"})


def _metric(client: httpx.Client, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


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
    assert _metric(client, "detector_ready") == 0
    assert _metric(client, "detector_inference_failures_total") >= 3  # and any probe that failed since
    assert _metric(client, "detector_requests_total", route="/detect", status="500") == 3
    assert client.get("/health/live").status_code == 200, "the process itself is fine: no restart needed"

    engine.failing = False  # the fault clears: the next probe (every second) finds the engine well
    _wait_for(lambda: _status(client, "/health/ready") == 200, "readiness did not come back after the fault cleared", timeout=30)
    assert _metric(client, "detector_ready") == 1
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
    small_package: Path, tmp_path: Path, edit: Callable[[Path, dict[str, Any]], None], exit_code: int, message: str
) -> None:
    server = ServerProcess({"DETECTOR_MODEL_DIR": str(_broken_copy(small_package, tmp_path, edit))})
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


def test_a_killed_server_restarts_ready_on_the_same_port(small_package: Path, scene_images: list[bytes]) -> None:
    env = {"DETECTOR_MODEL_DIR": str(small_package), "DETECTOR_INTRA_OP_THREADS": "1"}
    first = ServerProcess(env)
    client = first.wait_ready()
    sending = threading.Thread(target=lambda: [_detect_ignoring_errors(client, image) for image in scene_images * 4])
    sending.start()
    time.sleep(0.3)
    first.process.send_signal(signal.SIGKILL)  # no drain, no clean-up: as an OOM kill or a node failure would
    assert first.process.wait(timeout=30) == -signal.SIGKILL
    sending.join(timeout=60)

    second = ServerProcess(env, port=first.port)
    try:
        restarted = second.wait_ready(timeout=90)
        response = _detect(restarted, scene_images[1])
        assert response.status_code == 200 and response.json()["model"]["name"] == "shapes"
    finally:
        second.stop()
        first.log.close()


def _detect_ignoring_errors(client: httpx.Client, image: bytes) -> None:
    with contextlib.suppress(httpx.TransportError):  # the server was killed under this request
        _detect(client, image)
