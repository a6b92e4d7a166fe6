"""The shipped CPU image, built and run: what a user gets from `docker build --target runtime-cpu` and
`docker compose --profile cpu up`. Docker where an engine answers, otherwise Podman against stand-in
base images (tests/deploy/containers.py); skipped where neither exists, failed instead in CI."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.servers import free_port, wait_until
from model_export.synth import generate_image
from service.manifest import read_manifest
from tests.deploy.containers import (
    Container,
    Engine,
    ToolMissing,
    build_context_files,
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
from tests.deploy.dockerfile import parse_stages
from tests.deploy.tools import REPO, load_yaml
from tests.service.helpers import png_bytes, serving

# The cold build alone takes minutes on 2 cores: above the suite's per-test limit.
pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

TAG = "detector:cpu"  # the compose file's image for the cpu profile
PACKAGE = REPO / "models" / "default" / "package"
SIZE_GOAL_MB = 450
# Measured: 580 MB with OpenVINO trimmed (the Dockerfile's OPENVINO_UNUSED) and gRPC's packages (52 MB); 446 MB before either, without
# the pip trim. Far below an image with torch in it (the CUDA build alone is 6 GB, the CPU one 700 MB).
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


def runtime(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/models/default", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["runtime"]


# The precision a runtime reports, as DETECTOR_PRECISION names it.
PRECISION_SETTING = {"fp32": "f32", "bf16": "bf16", "int8": "int8"}


@pytest.fixture(scope="module")
def checkout_detect(scene: bytes) -> Callable[[str, str], dict[str, Any]]:
    """The scene's /detect answer from the service run from the checkout on models/default/package, with the engine
    and precision (DETECTOR_PRECISION's names) given; one server per pair, started on first use."""
    answers: dict[tuple[str, str], dict[str, Any]] = {}

    def answer(engine: str, precision: str) -> dict[str, Any]:
        if (engine, precision) not in answers:
            with serving(PACKAGE, DETECTOR_ENGINE=engine, DETECTOR_PRECISION=precision) as checkout:
                answers[engine, precision] = detect(checkout.url, scene)
        return answers[engine, precision]

    return answer


def assert_same_detections(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert ours["model"] == theirs["model"]
    assert ours["image"] == theirs["image"]
    our_detections, their_detections = ours["detections"], theirs["detections"]
    assert our_detections, "no detections on a scene full of objects"
    assert [d["class_name"] for d in our_detections] == [d["class_name"] for d in their_detections]
    for one, other in zip(our_detections, their_detections, strict=True):
        assert one["score"] == pytest.approx(other["score"], abs=SCORE_TOLERANCE), (one, other)
        assert [one["box"][k] for k in ("x1", "y1", "x2", "y2")] == pytest.approx(
            [other["box"][k] for k in ("x1", "y1", "x2", "y2")], abs=BOX_TOLERANCE_PX
        ), (one, other)


def test_build_context_holds_the_sources_and_the_package_only(engine: Engine, tmp_path: Path) -> None:
    """What .dockerignore lets the engine send: no checkpoint (models/default/model.pt), no data, no tests, no caches."""
    files = build_context_files(engine, tmp_path)
    allowed = ("pyproject.toml", "README.md", "model_export/", "service/", "models/default/package/")
    outside = sorted(f for f in files if not f.startswith(allowed))
    assert not outside, f"the build context holds files the images do not need: {outside[:20]}"
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert {"pyproject.toml", "service/__main__.py", "models/default/package/model.json"} <= files


def test_image_is_small_and_holds_no_torch(engine: Engine, image: str, container: Container, record_property: Any) -> None:
    size_mb = image_size_bytes(engine, image) / 1e6
    # tests/deploy/conftest.py prints it in the summary, whatever -s or -q say.
    record_property("image_size_mb", f"{size_mb:.0f} MB ({TAG}, {engine.name}; goal {SIZE_GOAL_MB} MB)")
    assert size_mb <= SIZE_LIMIT_MB, f"{TAG} is {size_mb:.0f} MB: something heavy got in (torch? OpenVINO untrimmed?)"
    no_torch = "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) for m in ('torch', 'torchvision')))"
    result = container.exec("python", "-c", no_torch)
    assert result.returncode == 0, f"torch or torchvision is importable in the image: {result.stdout}{result.stderr}"


# Run in the image: OpenVINO's frontends, the OPENVINO_UNUSED patterns (argv) that still match, its installed size.
OPENVINO_IN_IMAGE = """
import glob, json, os, sys
import openvino
from openvino.frontend import FrontEndManager
root = os.path.dirname(openvino.__file__)
print(json.dumps({
    "frontends": sorted(FrontEndManager().get_available_front_ends()),
    "left": [pattern for pattern in sys.argv[1:] if glob.glob(os.path.join(root, pattern))],
    "bytes": sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(root) for name in names),
}))
"""


def test_openvino_is_trimmed_to_the_onnx_frontend_and_the_cpu(container: Container, record_property: Any) -> None:
    patterns = parse_stages()["runtime-cpu"].arg("OPENVINO_UNUSED").split()
    result = container.exec("python", "-c", OPENVINO_IN_IMAGE, *patterns)
    assert result.returncode == 0, f"OpenVINO does not import in the image: {result.stdout}{result.stderr}"
    found = json.loads(result.stdout)
    record_property("image_openvino_mb", f"{found['bytes'] / 1e6:.0f} MB in site-packages/openvino (185 MB untrimmed)")
    assert found["frontends"] == ["ir", "onnx"], found["frontends"]
    assert not found["left"], f"the Dockerfile's OPENVINO_UNUSED left these in the image: {found['left']}"


# Run in the image: the built-in package's files and their SHA-256.
PACKAGE_IN_IMAGE = """
import hashlib, json, pathlib
root = pathlib.Path("/models/default")
print(json.dumps({p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}))
"""


def test_image_serves_the_checkout_package_whole(container: Container) -> None:
    """/models/default is models/default/package: every file its manifest names, byte for byte, and nothing else."""
    result = container.exec("python", "-c", PACKAGE_IN_IMAGE)
    assert result.returncode == 0, result.stderr
    in_image: dict[str, str] = json.loads(result.stdout)
    manifest = read_manifest(PACKAGE)
    named = {"model.json", manifest.onnx_file, *(graph.file for graph in manifest.graphs), *manifest.probe_images}
    assert named <= set(in_image), f"the image lacks {sorted(named - set(in_image))}"
    for name, digest in in_image.items():
        assert (PACKAGE / name).is_file(), f"/models/default/{name} is not in the checkout's package"
        assert digest == hashlib.sha256((PACKAGE / name).read_bytes()).hexdigest(), f"/models/default/{name} differs from the checkout's"


def test_server_runs_as_a_non_root_user(container: Container) -> None:
    assert container.exec("id", "-u").stdout.strip() not in ("", "0")
    # The server itself (PID 1), not only a shell started beside it.
    status = container.exec("cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert "0" not in uids, status


def test_healthcheck_passes_once_ready(container: Container) -> None:
    assert container.healthcheck_passes(timeout=60), container.logs()


def test_detections_equal_the_service_run_from_the_checkout(
    container: Container, scene: bytes, checkout_detect: Callable[[str, str], dict[str, Any]], record_property: Any
) -> None:
    # The image's own settings choose the engine and precision (DETECTOR_ENGINE=auto may try them on this machine):
    # the checkout is run with what it chose.
    chosen = runtime(container.url)
    record_property("image_default_runtime", f"{chosen['engine']} {chosen['precision']} on {chosen['device']} (no settings)")
    assert_same_detections(detect(container.url, scene), checkout_detect(chosen["engine"], PRECISION_SETTING[chosen["precision"]]))


def test_image_serves_with_openvino(
    engine: Engine, image: str, scene: bytes, checkout_detect: Callable[[str, str], dict[str, Any]]
) -> None:
    server = Container.start(
        engine, image, f"detector-image-openvino-{os.getpid()}", free_port(), {"DETECTOR_ENGINE": "openvino", "DETECTOR_PRECISION": "f32"}
    )
    try:
        server.wait_ready(READY_WITHIN_S)
        described = runtime(server.url)
        assert (described["engine"], described["device"], described["precision"]) == ("openvino", "cpu", "fp32"), described
        # OpenVINO's f32 against ONNX Runtime's on the same graph: the same detections within the tolerances.
        assert_same_detections(detect(server.url, scene), checkout_detect("onnxruntime", "f32"))
    finally:
        server.remove()


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
