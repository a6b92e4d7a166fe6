"""The shipped CPU image, built and run: what a user gets from `docker build --target runtime-cpu` and
`docker compose --profile cpu up`. Docker where an engine answers, otherwise Podman against stand-in
base images (tests/deploy/containers.py); skipped where neither exists, failed instead in CI."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from bench.servers import free_port, wait_until
from model_export.synth import generate_image
from tests.deploy.containers import (
    Container,
    Engine,
    ToolMissing,
    build_runtime_cpu,
    compose_command,
    ensure_standin_base,
    ensure_standin_prometheus,
    find_engine,
    http_ready,
    image_size_bytes,
    run,
    skip_or_fail,
)
from tests.deploy.tools import REPO, load_yaml
from tests.service.helpers import png_bytes, serving

# The cold build alone takes minutes on 2 cores: above the suite's per-test limit.
pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

TAG = "detector:cpu"  # the compose file's image for the cpu profile
SIZE_GOAL_MB = 450
# Far above the goal, far below an image with torch in it (the CUDA build alone is 6 GB, the CPU one 700 MB).
SIZE_LIMIT_MB = 600
READY_WITHIN_S = 60
STOP_GRACE_S = 45  # docker-compose.yml's stop_grace_period, above the service's 30 s drain
BOX_TOLERANCE_PX = 1.0
SCORE_TOLERANCE = 0.01
JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(scope="module")
def engine() -> Engine:
    try:
        return find_engine()
    except ToolMissing as missing:
        skip_or_fail(str(missing))


@pytest.fixture(scope="module")
def image(engine: Engine) -> Iterator[str]:
    """The CPU image, built for this module (replacing any detector:cpu there) and removed after it."""
    try:
        build_runtime_cpu(engine, TAG)
        yield TAG
    finally:
        engine("rmi", "--force", TAG, timeout=120, check=False)


@pytest.fixture(scope="module")
def container(engine: Engine, image: str) -> Iterator[Container]:
    """The image run as a user runs it: no settings, the port published on loopback only."""
    server = Container.start(engine, image, f"detector-image-test-{os.getpid()}", free_port())
    try:
        server.wait_ready(READY_WITHIN_S)
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def scene() -> bytes:
    """A photo-like upload: a synthetic scene of the kind the default model learnt, 7 objects of 6 classes, as a JPEG."""
    picture, objects = generate_image(seed=2024, index=0, empty_fraction=0.0)
    assert len(objects) >= 5
    return png_bytes(picture, "JPEG", quality=90)


def detect(url: str, image_bytes: bytes) -> dict[str, Any]:
    response = httpx.post(f"{url}/detect", content=image_bytes, headers=JPEG, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_image_is_small_and_holds_no_torch(engine: Engine, image: str, container: Container, record_property: Any) -> None:
    size_mb = image_size_bytes(engine, image) / 1e6
    # tests/deploy/conftest.py prints it in the summary, whatever -s or -q say.
    record_property("image_size_mb", f"{size_mb:.0f} MB ({TAG}, {engine.name}; goal {SIZE_GOAL_MB} MB)")
    assert size_mb <= SIZE_LIMIT_MB, f"{TAG} is {size_mb:.0f} MB: something heavy (torch?) got in"
    no_torch = "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) for m in ('torch', 'torchvision')))"
    result = container.exec("python", "-c", no_torch)
    assert result.returncode == 0, f"torch or torchvision is importable in the image: {result.stdout}{result.stderr}"


def test_server_runs_as_a_non_root_user(container: Container) -> None:
    assert container.exec("id", "-u").stdout.strip() not in ("", "0")
    # The server itself (PID 1), not only a shell started beside it.
    status = container.exec("cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert "0" not in uids, status


def test_healthcheck_passes_once_ready(container: Container) -> None:
    assert container.healthcheck_passes(timeout=60), container.logs()


def test_detections_equal_the_service_run_from_the_checkout(container: Container, scene: bytes) -> None:
    # The image exports its model from models/default/model.pt; the checkout serves models/default/package.
    in_image = detect(container.url, scene)
    with serving(REPO / "models" / "default" / "package") as checkout:
        from_checkout = detect(checkout.url, scene)
    assert in_image["model"] == from_checkout["model"]
    assert in_image["image"] == from_checkout["image"]
    image_detections, checkout_detections = in_image["detections"], from_checkout["detections"]
    assert image_detections, "no detections on a scene full of objects"
    assert [d["class_name"] for d in image_detections] == [d["class_name"] for d in checkout_detections]
    for ours, theirs in zip(image_detections, checkout_detections, strict=True):
        assert ours["score"] == pytest.approx(theirs["score"], abs=SCORE_TOLERANCE), (ours, theirs)
        assert [ours["box"][k] for k in ("x1", "y1", "x2", "y2")] == pytest.approx(
            [theirs["box"][k] for k in ("x1", "y1", "x2", "y2")], abs=BOX_TOLERANCE_PX
        ), (ours, theirs)


def test_stop_finishes_requests_in_flight_and_exits_0(engine: Engine, image: str, scene: bytes) -> None:
    # One image per batch on one thread: the burst takes a second or more, so the stop lands in it.
    server = Container.start(
        engine,
        image,
        f"detector-image-drain-{os.getpid()}",
        free_port(),
        {"DETECTOR_MAX_BATCH_SIZE": "1", "DETECTOR_INTRA_OP_THREADS": "1"},
    )
    requests = 24
    sent: list[float] = []
    finished: list[tuple[int, float]] = []

    def on_trace(event: str, _info: object) -> None:
        # The whole request is with the server: only a connection still without a request may be closed at a stop.
        if event == "http11.receive_response_headers.started":
            sent.append(time.monotonic())

    def post(client: httpx.Client) -> None:
        response = client.post("/detect", content=scene, headers=JPEG, extensions={"trace": on_trace})
        finished.append((response.status_code, time.monotonic()))

    try:
        server.wait_ready(READY_WITHIN_S)
        with (
            httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=requests)) as client,
            ThreadPoolExecutor(max_workers=requests) as pool,
        ):
            futures = [pool.submit(post, client) for _ in range(requests)]
            wait_until(lambda: len(sent) == requests, timeout_s=30, what="every request sent")
            stopped_at = time.monotonic()
            exit_code = server.stop(STOP_GRACE_S)
            for future in futures:
                future.result(timeout=60)
        assert [status for status, _ in finished] == [200] * requests, server.logs()
        in_flight = sum(at > stopped_at for _, at in finished)
        assert in_flight >= requests // 4, f"only {in_flight} requests were still in flight at the stop: the test proves nothing"
        assert exit_code == 0, server.logs()
    finally:
        server.remove()


# ---- docker-compose.yml, profile cpu: the detector and Prometheus (Grafana is not started) ----


@pytest.fixture(scope="module")
def compose_project(engine: Engine, image: str) -> Iterator[dict[str, str]]:
    """The cpu profile brought up for real, on loopback ports; brought down, volumes too, whatever happens."""
    try:
        command = compose_command(engine)
    except ToolMissing as missing:
        skip_or_fail(str(missing))
    prometheus_image = load_yaml("docker-compose.yml")["services"]["prometheus"]["image"]
    if engine.is_podman:
        ensure_standin_prometheus(engine, prometheus_image, ensure_standin_base(engine))
    urls = {"detector": f"http://127.0.0.1:{free_port()}", "prometheus": f"http://127.0.0.1:{free_port()}"}
    # The compose file publishes "${HOST_PORT:-8000}:8000": an address:port value binds loopback only.
    env = {
        **engine.env,
        "COMPOSE_PROFILES": "cpu",
        "HOST_PORT": urls["detector"].removeprefix("http://"),
        "PROMETHEUS_PORT": urls["prometheus"].removeprefix("http://"),
        "GRAFANA_PORT": f"127.0.0.1:{free_port()}",
    }
    project = [*command, "-f", str(REPO / "docker-compose.yml"), "-p", f"detector-image-test-{os.getpid()}", "--profile", "cpu"]
    try:
        run([*project, "up", "-d", "detector-cpu", "prometheus"], timeout=300, env=env)
        yield urls
    finally:
        run([*project, "down", "-t", str(STOP_GRACE_S), "-v"], timeout=STOP_GRACE_S * 2 + 60, env=env, check=False)


def prometheus_query(prometheus: str, query: str) -> list[dict[str, Any]]:
    try:
        response = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}, timeout=5)
    except httpx.TransportError:
        return []
    return response.json()["data"]["result"] if response.status_code == 200 else []


def test_compose_cpu_profile_serves_and_prometheus_scrapes_it(compose_project: dict[str, str], scene: bytes) -> None:
    wait_until(lambda: http_ready(compose_project["detector"]), timeout_s=READY_WITHIN_S, what="the detector ready")
    assert detect(compose_project["detector"], scene)["detections"]
    # Prometheus scrapes every 15 s (deploy/prometheus/prometheus.yml): a few rounds at most.
    prometheus = compose_project["prometheus"]
    up = 'up{job="detector"}'
    wait_until(lambda: any(r["value"][1] == "1" for r in prometheus_query(prometheus, up)), timeout_s=90, what=f"{up} == 1")
    series = '{__name__=~"detector_.+", job="detector"}'
    wait_until(lambda: bool(prometheus_query(prometheus, series)), timeout_s=60, what="a detector_ series in Prometheus")
