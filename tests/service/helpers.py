"""Test helpers for the service: image bytes, a TestClient's readiness, and the real server (bench/servers.py)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from bench.servers import ServerProcess, service_spec, wait_until
from service.manifest import ModelManifest


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


# Model repositories (service/repository.py): copies of one package under <root>/<name>/<version>/


def add_version(root: Path, package: Path, name: str, version: int) -> Path:
    """A copy of ``package`` as ``name`` version ``version``; its class names say which (``alpha2-class1``), so that an
    answer shows the version that gave it."""
    target = root / name / str(version)
    shutil.copytree(package, target)
    manifest = ModelManifest.read(target)
    categories = [manifest.categories[0], *(f"{name}{version}-{category}" for category in manifest.categories[1:])]
    manifest.model_copy(update={"name": name, "version": str(version), "categories": categories}).write(target)
    return target


def make_repository(root: Path, package: Path, models: Mapping[str, list[int]]) -> Path:
    for name, versions in models.items():
        for version in versions:
            add_version(root, package, name, version)
    return root


def set_policy(root: Path, name: str, policy: Mapping[str, object] | None) -> None:
    """Writes ``<root>/<name>/policy.json`` (None: removes it, the latest version only)."""
    path = root / name / "policy.json"
    if policy is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(json.dumps(policy), encoding="utf-8")
