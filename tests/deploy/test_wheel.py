"""The package as a user installs it: the wheel, non-editable, with the ``serve`` extra, in a fresh
virtual environment outside the checkout, serving the default model.

An editable install (what ``make setup`` does) serves every module straight from the checkout, so a
module the wheel leaves out, or an import of torch on the serving side, only shows up here.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.servers import ServerError, ServerProcess, python_module, service_spec
from model_export.synth import generate_image
from service.agreement import box_iou
from tests.deploy.tools import REPO
from tests.mutants import copy_project, project_files
from tests.service.helpers import png_bytes, serving
from tests.service.readings import same_detections

pytestmark = pytest.mark.slow

DEFAULT_PACKAGE = REPO / "models" / "default" / "package"
# What points Python at the checkout (or sets the service up) in this process's environment: none of it reaches the wheel.
CHECKOUT_ENV = ("PYTHON", "DETECTOR_", "VIRTUAL_ENV")
# A synthetic scene the default model has never seen (its data sets use seeds 1, 2 and 3).
SCENE_SEED, SCENE_INDEX = 77, 4


def run(command: list[str], cwd: Path, timeout_s: float) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}", pytrace=False
        )


def copy_sources(destination: Path) -> Path:
    """The files git would ship (tracked, or new and not ignored), and nothing a local build left behind.

    setuptools never empties its ``build/`` folder, so a wheel built in the checkout may carry a module
    from an earlier build that the current configuration leaves out. The models stay behind: the wheel has none.
    """
    copy_project(REPO, [name for name in project_files(REPO) if not name.startswith("models/")], destination)
    return destination


@pytest.fixture(scope="module")
def installed_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtual environment holding the project's wheel and its ``serve`` extra only."""
    root = tmp_path_factory.mktemp("wheel")
    sources = copy_sources(root / "src")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), "."], sources, 300)
    (wheel,) = (root / "dist").glob("*.whl")
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", f"{wheel}[serve]"], root, 600)
    return python


def test_the_wheel_leaves_out_torch_and_the_checkout(installed_python: Path) -> None:
    """The serving extra brings no torch, and the package imports from site-packages, not from here."""
    probe = "import importlib.util as u, service.api.routes as r; print(u.find_spec('torch') is None, r.__file__)"
    result = subprocess.run(
        [str(installed_python), "-c", probe], cwd=installed_python.parents[2], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert result.returncode == 0, result.stderr
    no_torch, location = result.stdout.split()
    assert no_torch == "True", "the serve extra installs torch"
    assert "site-packages" in location and not location.startswith(str(REPO)), location


def clean_env() -> dict[str, str]:
    """This process's environment without anything that points Python at the checkout."""
    return {name: value for name, value in os.environ.items() if not name.startswith(CHECKOUT_ENV)}


@pytest.fixture(scope="module")
def wheel_server(installed_python: Path) -> Iterator[httpx.Client]:
    """``python -m service`` from the installed wheel, started outside the checkout, on the default package."""
    # The float graph, as the checkout's server below: left to auto, either could choose another precision on this machine.
    settings = {"DETECTOR_MODEL_DIR": str(DEFAULT_PACKAGE), "DETECTOR_INTRA_OP_THREADS": "1", "DETECTOR_PRECISION": "f32"}
    spec = service_spec(settings, label="the installed server")
    spec = dataclasses.replace(
        spec, command=python_module("service", python=installed_python), cwd=installed_python.parents[2], dropped_env=CHECKOUT_ENV
    )
    server = ServerProcess(spec).launch()
    try:
        try:
            client = server.wait_ready(timeout_s=90)
        except ServerError as error:
            pytest.fail(str(error), pytrace=False)
        yield client
        assert server.stop(timeout_s=40) == 0, f"SIGTERM did not stop the server cleanly: {server.output(3000)}"
    finally:
        server.close()


def found(annotation: dict, detections: list[dict], min_iou: float = 0.5) -> bool:
    """Whether a detection of the annotation's class overlaps its box by ``min_iou`` or more."""
    x, y, w, h = annotation["bbox"]
    same_class = [d["box"] for d in detections if d["label"] == annotation["category_id"]]
    if not same_class:
        return False
    boxes = np.array([[box[k] for k in ("x1", "y1", "x2", "y2")] for box in same_class])
    return bool(box_iou(np.array([[x, y, x + w, y + h]]), boxes).max() >= min_iou)


def test_the_installed_server_detects_as_the_checkout_does(wheel_server: httpx.Client) -> None:
    image, annotations = generate_image(SCENE_SEED, SCENE_INDEX)
    body = png_bytes(image)
    answer = wheel_server.post("/detect", content=body, headers={"Content-Type": "image/png"}, params={"score_threshold": 0.5})
    assert answer.status_code == 200, answer.text
    detections = answer.json()["detections"]
    assert annotations and all(found(annotation, detections) for annotation in annotations), "every object of the scene is found"
    with serving(DEFAULT_PACKAGE, DETECTOR_PRECISION="f32") as checkout, httpx.Client(base_url=checkout.url, timeout=30.0) as client:
        expected = client.post("/detect", content=body, headers={"Content-Type": "image/png"}, params={"score_threshold": 0.5})
    assert same_detections(detections, expected.json()["detections"])


def test_the_installed_server_serves_the_page(wheel_server: httpx.Client) -> None:
    """The page's files are package data: a wheel that left them out would answer 500 or 404 here."""
    page = wheel_server.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text[:200]
    for asset in ("/static/page.js", "/static/page.css"):
        assert asset in page.text
        assert wheel_server.get(asset).status_code == 200, asset
