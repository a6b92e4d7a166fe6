"""The real server: `python -m service` on a loopback port, spoken to over HTTP."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from bench.servers import REPO
from tests.service.readings import same_detections, scrape, statuses, value


def _detect(client: httpx.Client, image: bytes, score: float, iou: float) -> httpx.Response:
    return client.post(f"/detect?score_threshold={score}&iou_threshold={iou}", content=image, headers={"Content-Type": "image/jpeg"})


def test_concurrent_mixed_requests_equal_each_request_alone(start_server, scene_images: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    server = start_server(DETECTOR_MAX_BATCH_SIZE="8", DETECTOR_MAX_BATCH_WAIT_MS="20")
    client = server.wait_ready()
    requests = [(scene_images[i % len(scene_images)], [0.05, 0.2, 0.5][i % 3], [0.5, 0.6][i % 2]) for i in range(32)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        batched = list(pool.map(lambda r: _detect(client, *r), requests))
    alone = [_detect(client, *r) for r in requests]
    assert all(r.status_code == 200 for r in batched + alone)
    for together, single in zip(batched, alone, strict=True):
        assert same_detections(together.json()["detections"], single.json()["detections"])
    assert any(r.json()["detections"] for r in batched)

    families = scrape(client)
    runs = value(families, "detector_batch_size", "detector_batch_size_count")
    assert runs < 64 + 8, "the concurrent half should have run in shared batches"
    assert value(families, "detector_batch_size", "detector_batch_size_bucket", le="1.0") < runs, (
        "some graph runs should hold more than one request"
    )
    assert statuses(families) == {"200": 64.0}


def test_sigterm_drains_in_flight_requests_and_exits_zero(start_server, scene_images: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    server = start_server(DETECTOR_MAX_BATCH_SIZE="1", DETECTOR_MAX_BATCH_WAIT_MS="0", DETECTOR_SHUTDOWN_GRACE_S="20")
    client = server.wait_ready()
    results: list[int] = []

    def send(index: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as own:
            results.append(_detect(own, scene_images[index % len(scene_images)], 0.3, 0.5).status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    # Once the server holds all twelve (in flight or answered), ask it to stop.
    while True:
        in_flight, answered = _progress(client)
        if in_flight + answered >= 12:
            break
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert in_flight > 0, "every request finished before the signal: nothing was drained"
    assert _refused_while_draining(server.url, scene_images[0])
    for thread in threads:
        thread.join(timeout=60)
    assert server.process.wait(timeout=60) == 0, server.output()
    assert time.monotonic() - signalled < 20, "the drain should end within the grace period"
    assert results == [200] * 12, results


def _refused_while_draining(url: str, image: bytes) -> bool:
    """A request that arrives after the signal: the listener is closed (connection refused) or it gets 503."""
    try:
        while httpx.get(f"{url}/health/ready").status_code == 200:  # until the server has taken the signal
            time.sleep(0.01)
        time.sleep(0.3)  # uvicorn closes its listener at its next tick (0.1 s)
        response = httpx.post(f"{url}/detect", content=image, headers={"Content-Type": "image/jpeg"}, timeout=30)
    except httpx.ConnectError:
        return True
    return response.status_code == 503 and response.headers["content-type"] == "application/problem+json"


def _progress(client: httpx.Client) -> tuple[int, int]:
    """(/detect requests in flight, /detect requests answered); the scrape itself is one request in flight."""
    families = scrape(client)
    return int(value(families, "detector_requests_in_flight")) - 1, int(sum(statuses(families).values()))


def _run_to_its_exit(**env: str) -> subprocess.CompletedProcess[str]:
    """``python -m service`` with ``env`` added to this environment, expected to stop at start."""
    return subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def test_bad_settings_stop_the_server_naming_the_variable(small_package: Path) -> None:
    result = _run_to_its_exit(DETECTOR_MODEL_DIR=str(small_package), DETECTOR_MAX_BATCH_SIZE="0", DETECTOR_PROVIDERS="gpu-please")
    assert result.returncode == 2
    assert "DETECTOR_MAX_BATCH_SIZE" in result.stderr and "DETECTOR_PROVIDERS" in result.stderr


def test_a_missing_model_package_stops_the_server(tmp_path: Path) -> None:
    result = _run_to_its_exit(DETECTOR_MODEL_DIR=str(tmp_path / "nothing-here"))
    assert result.returncode == 2
    assert "DETECTOR_MODEL_DIR" in result.stderr and "not a model package directory" in result.stderr


def test_serving_imports_nothing_of_torch(small_package: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from fastapi.testclient import TestClient
        from service.main import create_app
        from service.settings import Settings
        app = create_app(Settings(model_dir={str(small_package)!r}))
        with TestClient(app) as client:
            while client.get("/health/ready").status_code != 200:
                time.sleep(0.05)
            assert client.post("/detect", content=open({str(REPO / "models")!r} + "/../README.md", "rb").read()[:0] or b"x",
                               headers={{"Content-Type": "image/png"}}).status_code == 422
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
        print("TORCH:", loaded)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "TORCH: []" in result.stdout


def test_providers_this_onnxruntime_lacks_stop_the_server(small_package: Path) -> None:
    import onnxruntime

    from service.engines.onnxruntime import PROVIDER_NAMES

    missing = [name for name, provider in PROVIDER_NAMES.items() if provider not in onnxruntime.get_available_providers()]
    if not missing:
        pytest.skip("this onnxruntime offers every provider")
    result = _run_to_its_exit(DETECTOR_MODEL_DIR=str(small_package), DETECTOR_PROVIDERS=missing[0])
    assert result.returncode == 2
    assert "DETECTOR_PROVIDERS asks for" in result.stderr
