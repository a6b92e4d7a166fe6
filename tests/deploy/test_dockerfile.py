"""The Dockerfile: hadolint, and what it promises about the GPU image, which is built nowhere here (test_image.py builds and runs the CPU one)."""

from __future__ import annotations

import re
import subprocess
import tomllib

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


def test_build_stage_exports_the_default_model_and_runtimes_carry_it() -> None:
    stages = parse_stages()
    export = stages["export"]
    assert any("torch==2.14.1" in run and "torchvision==0.29.1" in run for run in export.all("RUN"))
    assert "python -m model_export export --checkpoint models/default/model.pt --out /build/package" in export.all("RUN")
    for name in RUNTIME_STAGES:
        assert "--from=export /build/package /models/default" in stages[name].all("COPY"), name
        assert stages[name].env()["DETECTOR_MODEL_DIR"] == "/models/default"


def test_runtime_images_install_serving_extras_without_torch() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    stages = parse_stages()
    installed = {
        "runtime-cpu": re.findall(r"/src\[([^\]]+)\]", " ".join(stages["runtime-cpu"].all("RUN"))),
        "runtime-gpu": [a.split("=", 1)[1] for a in stages["runtime-gpu"].all("ARG") if a.startswith("GPU_EXTRAS=")],
    }
    assert installed["runtime-cpu"] == ["serve"]
    assert "serve-gpu" in installed["runtime-gpu"][0].split(",")
    for name, chosen in installed.items():
        for extra in ",".join(chosen).split(","):
            packages = " ".join(extras[extra])
            assert "torch" not in packages, f"{name} installs extra {extra}, which pulls torch: {packages}"


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
        assert stage.all("EXPOSE") == [str(Settings.model_fields["port"].default)], name
        check_settings_env(stage.env(), f"Dockerfile stage {name}")
    gpu = stages["runtime-gpu"]
    assert gpu.env()["DETECTOR_TRT_CACHE_DIR"] in " ".join(gpu.all("VOLUME")), "the TensorRT engine cache should be a volume"


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
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
        if source != "models/default/model.pt":  # being trained; the build stops with a clear COPY error without it
            assert (REPO / source).exists(), source
