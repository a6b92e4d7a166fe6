"""Test helpers for the service: image bytes, a TestClient's readiness, and the real server (bench/servers.py)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from bench.servers import ServerProcess, service_spec, wait_until


def png_bytes(image: Image.Image, format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def solid_image(width: int, height: int, colour: tuple[int, int, int] = (120, 130, 140)) -> Image.Image:
    return Image.fromarray(np.full((height, width, 3), colour, dtype=np.uint8))


def wait_ready(client: TestClient | httpx.Client, timeout_s: float = 60.0) -> None:
    """Until the app behind ``client`` reports ready (its lifespan loads and warms the model meanwhile)."""
    wait_until(lambda: client.get("/health/ready").status_code == 200, timeout_s, "the service ready")


def server_env(package: Path, **env: str) -> dict[str, str]:
    """A test server's settings: ``package``, one inference thread, and ``env``."""
    return {"DETECTOR_MODEL_DIR": str(package), "DETECTOR_INTRA_OP_THREADS": "1", **env}


def start_service(env: Mapping[str, str], port: int | None = None) -> ServerProcess:
    """``python -m service`` with ``env`` (DETECTOR_* settings; none from this shell), launched but not waited for."""
    return ServerProcess(service_spec(env), port).launch()


@contextlib.contextmanager
def serving(package: Path, **env: str) -> Iterator[ServerProcess]:
    """A ready server on ``package``, on one inference thread, for a with-block (a module's fixture); closed at its end."""
    with ServerProcess(service_spec(server_env(package, **env))) as server:
        yield server
