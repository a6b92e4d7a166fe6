"""The Dockerfile: hadolint, and what it promises about the GPU image, which is built nowhere here (test_image.py builds and runs the CPU one)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from service.settings import Settings
from tests.deploy.dockerfile import DOCKERFILE, parse_stages
from tests.deploy.tools import REPO, check_settings_env, require_tool

RUNTIME_STAGES = ("runtime-cpu", "runtime-gpu")


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = require_tool("hadolint")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_target_is_the_gpu_image_and_cpu_is_a_target() -> None:
    stages = parse_stages()
    assert list(stages)[-1] == "runtime-gpu", "docker build without --target should give the GPU image"
    assert "nvidia/cuda" in DOCKERFILE.read_text() and "cudnn-runtime" in DOCKERFILE.read_text()
    assert stages["runtime-cpu"].base == "${PYTHON_IMAGE}"


def test_runtimes_carry_the_committed_package_and_no_stage_installs_torch() -> None:
    stages = parse_stages()
    for name in RUNTIME_STAGES:
        # The whole folder: the graphs, model.json and the probe images beside them.
        assert "models/default/package/ /models/default/" in stages[name].all("COPY"), name
        assert stages[name].env()["DETECTOR_MODEL_DIR"] == "/models/default"
    for stage in stages.values():
        for keyword, args in stage.instructions:
            assert not re.search(r"\btorch(vision)?\b", args), f"stage {stage.name} has torch in its build: {keyword} {args}"
            assert "model.pt" not in args, f"stage {stage.name} reads the checkpoint: {keyword} {args}"


def test_runtime_images_install_serving_extras_without_torch() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    stages = parse_stages()
    installed = {
        "runtime-cpu": stages["runtime-cpu"].arg("CPU_EXTRAS").split(","),
        "runtime-gpu": stages["runtime-gpu"].arg("GPU_EXTRAS").split(","),
    }
    assert '"/src[${CPU_EXTRAS}]"' in " ".join(stages["runtime-cpu"].all("RUN"))
    assert installed["runtime-cpu"] == ["serve", "openvino"], "the CPU image serves with onnxruntime and OpenVINO"
    assert "serve-gpu" in installed["runtime-gpu"]
    for name, chosen in installed.items():
        for extra in chosen:
            packages = " ".join(extras[extra])
            assert "torch" not in packages, f"{name} installs extra {extra}, which pulls torch: {packages}"


def test_openvino_trim_removes_only_what_the_service_never_loads() -> None:
    """Each OPENVINO_UNUSED pattern matches in the pinned OpenVINO (make setup installs it here), and none of them
    what the service loads: libopenvino, the CPU plugin, the ONNX frontend, the Python bindings, TBB. test_image.py
    checks that the trimmed image serves with DETECTOR_ENGINE=openvino."""
    pinned = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["openvino"]
    try:
        distribution = importlib.metadata.distribution("openvino")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"OpenVINO is not installed here (the image installs {pinned}): run make setup", pytrace=False)
    here = f"openvino=={distribution.version}"
    assert here in pinned, f"this checkout's OpenVINO is {here}, the image installs {pinned}: run make setup"
    openvino = Path(str(distribution.locate_file("openvino")))
    patterns = parse_stages()["runtime-cpu"].arg("OPENVINO_UNUSED").split()
    removed: set[Path] = set()
    for pattern in patterns:
        matches = set(openvino.glob(pattern))
        assert matches, f"OPENVINO_UNUSED: {pattern} matches nothing in {openvino}: the image build would stop there"
        removed |= matches
    needed = [openvino / "libs" / "libopenvino_intel_cpu_plugin.so", openvino / "frontend" / "onnx"]
    for pattern in ("libs/libopenvino.so.*", "libs/libopenvino_onnx_frontend.so.*", "libs/libtbb.so.*", "_pyopenvino.*.so"):
        needed += openvino.glob(pattern) or [openvino / pattern]
    for path in needed:
        assert path.exists(), f"{path} is not in OpenVINO {here}: the service needs it"
        assert not {path, *path.parents} & removed, f"OPENVINO_UNUSED removes {path}, which the service loads"


def test_runtime_images_run_one_server_as_non_root_with_a_readiness_healthcheck() -> None:
    stages = parse_stages()
    for name in RUNTIME_STAGES:
        stage = stages[name]
        user = stage.all("USER")[-1]
        assert user.split(":")[0] not in ("root", "0"), f"{name} runs as {user}"
        # Exec form: python -m service is PID 1 and receives SIGTERM itself (no shell in between).
        assert stage.all("CMD") == ['["python", "-m", "service"]'], name
        assert not stage.all("ENTRYPOINT"), name
        healthcheck = stage.all("HEALTHCHECK")[-1]
        assert "/health/ready" in healthcheck and "DETECTOR_PORT" in healthcheck, healthcheck
        assert stage.all("EXPOSE") == [f"{Settings.model_fields['port'].default} 8001"], name  # HTTP, and gRPC on Triton's port
        check_settings_env(stage.env(), f"Dockerfile stage {name}")
    gpu = stages["runtime-gpu"]
    assert gpu.env()["DETECTOR_TRT_CACHE_DIR"] in " ".join(gpu.all("VOLUME")), "the TensorRT engine cache should be a volume"


def test_dockerignore_lets_in_what_the_dockerfile_copies_and_not_the_checkpoint() -> None:
    """Read as text; test_image.py builds the real build context and lists it."""
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", ".dockerignore should exclude everything first (data/ and runs/ are gigabytes)"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = []
    for stage in parse_stages().values():
        for args in stage.all("COPY"):
            if not args.startswith("--from"):
                sources += [s.rstrip("/") for s in args.split()[:-1]]
    assert sources, "no COPY from the build context found"
    for source in sources:
        assert source in allowed, f"COPY {source} is excluded by .dockerignore"
        assert (REPO / source).exists(), source
    checkpoint = Path("models/default/model.pt")
    letting_in = [line for line in allowed if Path(line) in (checkpoint, *checkpoint.parents[:-1])]
    assert not letting_in, f".dockerignore lets the checkpoint into the build context: {letting_in}"
