"""Test helpers for the service: image bytes, readiness waits, a real server process."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def png_bytes(image: Image.Image, format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def wait_ready(client: TestClient | httpx.Client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise TimeoutError("the service did not become ready")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m service`` in its own process, on a free loopback port."""

    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "DETECTOR_HOST": "127.0.0.1", "DETECTOR_PORT": str(self.port), **env}
        # Logs go to a file: a pipe nobody reads would fill and stall the server.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (read after the process ends)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=environment, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 90.0, headers: dict[str, str] | None = None) -> httpx.Client:
        client = httpx.Client(base_url=self.url, timeout=30.0, headers=headers)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: {self.output()}")
            try:
                if client.get("/health/ready").status_code == 200:
                    return client
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the server did not become ready")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@contextlib.contextmanager
def serving(package: Path, **env: str) -> Iterator[ServerProcess]:
    """A ready server on ``package`` for a with-block (a module's fixture), stopped at its end."""
    server = ServerProcess({"DETECTOR_MODEL_DIR": str(package), "DETECTOR_INTRA_OP_THREADS": "1", **env})
    try:
        server.wait_ready().close()
        yield server
    finally:
        server.stop()


def solid_image(width: int, height: int, colour: tuple[int, int, int] = (120, 130, 140)) -> Image.Image:
    return Image.fromarray(np.full((height, width, 3), colour, dtype=np.uint8))
