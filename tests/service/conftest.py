"""Service fixtures: a small real model package, the app under TestClient, and a real server process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model_export.export import ExportConfig, export_package
from model_export.synth import generate_image
from service.main import create_app
from service.settings import Settings
from tests.service.helpers import ServerProcess, png_bytes, wait_ready

SMALL_CANVAS = (128, 160)


@pytest.fixture(scope="session")
def small_package(tmp_path_factory: pytest.TempPathFactory, random_model) -> Path:  # type: ignore[no-untyped-def]
    """A random compact model (calibrated to behave like a trained one), exported as a real package."""
    package = tmp_path_factory.mktemp("service") / "package"
    loaded = random_model("fasterrcnn_compact_fpn", num_classes=4, canvas=SMALL_CANVAS, seed=3)
    config = ExportConfig(
        name="shapes", version="7", max_batch=8, max_detections=30, score_threshold=0.3, parity_images=2, parity_batches=(2,)
    )
    export_package(loaded, package, config)
    return package


@pytest.fixture(scope="session")
def scene_images() -> list[bytes]:
    """Eight synthetic scenes of several sizes, as PNG and JPEG bytes."""
    images = []
    for index in range(8):
        image, _ = generate_image(seed=42, index=index)
        images.append(png_bytes(image) if index % 2 else png_bytes(image, "JPEG", quality=92))
    return images


@pytest.fixture
def make_client(small_package: Path) -> Iterator[Callable[..., TestClient]]:
    """Builds a TestClient (lifespan running, model ready) with settings overridden."""
    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        settings = Settings(model_dir=small_package, **overrides)  # type: ignore[arg-type]
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def start_server(small_package: Path) -> Iterator[Callable[..., ServerProcess]]:
    servers: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        server = ServerProcess({"DETECTOR_MODEL_DIR": str(small_package), "DETECTOR_INTRA_OP_THREADS": "1", **env})
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
