"""Service fixtures: scenes, the app under TestClient, and the real server (a module's, or started by a test)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from bench.servers import ServerProcess
from model_export.synth import generate_image
from service.main import create_app
from service.settings import Settings
from tests.service.helpers import png_bytes, server_env, serving, start_service, wait_ready


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


@pytest.fixture(scope="module")
def server(small_package: Path) -> Iterator[ServerProcess]:
    """One ready server on the small package for the module's tests (a module may override it with its own settings)."""
    with serving(small_package) as process:
        yield process


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    """A client of the module's server."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture
def start_server(small_package: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Launches ``python -m service`` on the small package, one inference thread and the given DETECTOR_* settings (and
    optionally a port); the test waits for it as it needs. Every server started is closed after the test."""
    servers: list[ServerProcess] = []

    def start(port: int | None = None, **env: str) -> ServerProcess:
        servers.append(start_service(server_env(small_package, **env), port))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
