"""Container engines for the image tests: Docker where an engine answers, otherwise Podman.

On a machine with Docker the Dockerfile builds as a user builds it, against the public images.
Where no registry can be reached (CI here), Podman builds it against stand-ins made from Debian's
packages (tests/deploy/standin-*), tagged with the names the Dockerfile and the compose file use,
and pip inside the build reaches the package registry through the host's own pip configuration.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from bench.servers import wait_until
from tests.deploy.tools import REPO

HERE = Path(__file__).resolve().parent
CONTAINERS_CONF = HERE / "containers.conf"
STANDIN_BASE_SCRIPT = HERE / "standin-base.sh"
STANDIN_PROMETHEUS_FILE = HERE / "standin-prometheus.Containerfile"
# Stamped on the stand-in images: the hash of what built them, so a changed fixture is rebuilt.
STANDIN_LABEL = "org.fasterrcnn-serving.test-standin"
INSTALL_HINT = "run deploy/install-image-tools.sh"
# The CA bundle at the path Debian's pip and OpenSSL read (TLS to a registry may be re-signed by a proxy).
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ToolMissing(Exception):
    """What the image tests need and this machine lacks."""


def skip_or_fail(reason: str) -> NoReturn:
    """Skips where a developer lacks a container engine; in CI (CI set) a missing engine is a failure."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def run(command: Sequence[str], timeout: float, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A command with a bound on its time; on failure the error shows its output."""
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


@dataclass(frozen=True)
class Engine:
    """A container engine's command line: ``docker`` or ``podman``, with the environment it runs in."""

    name: str
    binary: str
    env: dict[str, str] = field(default_factory=dict, repr=False)  # the whole environment: kept out of reports

    @property
    def is_podman(self) -> bool:
        return self.name == "podman"

    def __call__(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([self.binary, *args], timeout=timeout, env=self.env, check=check)

    def image_exists(self, name: str) -> bool:
        return self("image", "inspect", name, check=False).returncode == 0

    def image_label(self, name: str, label: str) -> str:
        return self("image", "inspect", name, "--format", f'{{{{index .Config.Labels "{label}"}}}}').stdout.strip()

    def image_ids(self) -> set[str]:
        return set(self("images", "--all", "--quiet", "--no-trunc").stdout.split())


def find_engine() -> Engine:
    """Docker if its engine answers (``docker info``), else Podman; ToolMissing names what is missing."""
    docker = shutil.which("docker")
    if docker is not None:
        try:
            if run([docker, "info"], timeout=30, check=False).returncode == 0:
                # The Dockerfile's RUN --mount needs BuildKit (the default builder since Docker 23, not before).
                return Engine("docker", docker, {**os.environ, "DOCKER_BUILDKIT": "1"})
        except subprocess.TimeoutExpired:
            pass
    podman = shutil.which("podman")
    if podman is None:
        found = "a docker client but no Docker engine answering" if docker else "no docker"
        raise ToolMissing(f"no container engine: {found}, and no podman ({INSTALL_HINT})")
    # Podman's settings for machines without systemd (cgroup v1 hybrid, low ulimits): see containers.conf.
    return Engine("podman", podman, {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)})


def dockerfile_default_args() -> dict[str, str]:
    """The Dockerfile's ARG defaults declared before the first FROM (the base images' names)."""
    args: dict[str, str] = {}
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            break
        if match := re.match(r"ARG (\w+)=(\S+)", line):
            args[match.group(1)] = match.group(2)
    return args


def fully_qualified(image: str) -> str:
    """docker.io/library/python:3.11 for python:3.11, as Docker resolves a short name (Podman needs it spelled out)."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if rest else f"docker.io/library/{image}"


def fixture_hash(*parts: Path | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.read_bytes() if isinstance(part, Path) else part.encode())
    return digest.hexdigest()[:16]


def needs_standin(engine: Engine, image: str, wanted: str) -> bool:
    """Whether to build a stand-in: none there, or an outdated one (a real image, unlabelled, is kept)."""
    if not engine.image_exists(image):
        return True
    label = engine.image_label(image, STANDIN_LABEL)
    return label not in ("", "<no value>", wanted)


def ensure_standin_base(engine: Engine) -> str:
    """The Dockerfile's Python base image, made from Debian's packages where it is not there (about a minute)."""
    image = fully_qualified(dockerfile_default_args()["PYTHON_IMAGE"])
    wanted = fixture_hash(STANDIN_BASE_SCRIPT)
    if needs_standin(engine, image, wanted):
        run(["bash", str(STANDIN_BASE_SCRIPT), engine.binary, image, f"{STANDIN_LABEL}={wanted}"], timeout=600, env=engine.env)
    return image


def ensure_standin_prometheus(engine: Engine, image: str, base: str) -> None:
    """The compose file's Prometheus image, as Debian's prometheus on the stand-in base, where it is not there."""
    wanted = fixture_hash(STANDIN_PROMETHEUS_FILE, engine("image", "inspect", base, "--format", "{{.Id}}").stdout.strip())
    if not needs_standin(engine, fully_qualified(image), wanted):
        return
    engine(
        "build",
        *("--format", "docker", "--pull=never", "--layers=false"),
        *("--build-arg", f"BASE={base}", "--label", f"{STANDIN_LABEL}={wanted}"),
        *("-t", fully_qualified(image), "-f", str(STANDIN_PROMETHEUS_FILE), str(HERE)),
        timeout=600,
    )


def host_pip_files() -> list[Path]:
    """The pip configuration files that the host's pip reads, the local files and folders they name, the CA bundle.

    A file:// index (``.../simple``) is mounted with its parent: its pages link to ``../../files/``.
    The host's PIP_* variables do not reach a build (the Dockerfile declares no ARG for them): where a
    registry is only configured through them, put the settings in a pip configuration file.
    """
    debug = run([sys.executable, "-m", "pip", "config", "debug"], timeout=60).stdout
    configs = [Path(m.group(1)) for m in re.finditer(r"^\s+(/\S+), exists: True$", debug, re.MULTILINE)]
    named = [Path(p) for p in re.findall(r"(?:file://)?(/[^\s'\"]+)", "\n".join(c.read_text() for c in configs))]
    paths = [*configs, *(p.parent if p.name == "simple" else p for p in named), CA_BUNDLE]
    return sorted({p for p in paths if p.exists()})


def pip_mount_options() -> list[str]:
    """``-v SRC:SRC:ro`` for each host pip file, without mounting one inside another."""
    paths = host_pip_files()
    outermost = [p for p in paths if not any(other != p and other in p.parents for other in paths)]
    return [option for p in outermost for option in ("-v", f"{p}:{p}:ro")]


def build_runtime_cpu(engine: Engine, tag: str) -> None:
    """``--target runtime-cpu`` of the Dockerfile, as a user builds it (Docker) or against the stand-ins (Podman)."""
    if not engine.is_podman:
        engine("build", "--target", "runtime-cpu", "-t", tag, str(REPO), timeout=1500)
        return
    # The GPU stage's FROM ${UV_IMAGE} is not pulled: buildah skips the stages a target does not use
    # (--skip-unused-stages, its default), as BuildKit does.
    ensure_standin_base(engine)
    before = engine.image_ids()
    try:
        engine(
            "build",
            # docker format keeps the HEALTHCHECK; --no-cache and --layers=false: buildah 1.28 reuses a cached
            # RUN --mount=type=bind,from=STAGE layer when that stage changed, and keeps no layers we would prune.
            *("--format", "docker", "--no-cache", "--layers=false", "--pull=never"),
            *pip_mount_options(),
            *("--target", "runtime-cpu", "-t", tag, str(REPO)),
            timeout=1500,
        )
    finally:
        remove_images_made_since(engine, before, keep=tag)


def remove_images_made_since(engine: Engine, before: set[str], keep: str) -> None:
    """The build's intermediate images (the src stage), so that repeated runs do not fill CI's disk."""
    kept = engine("image", "inspect", keep, "--format", "{{.Id}}", check=False).stdout.strip()
    made = [image for image in engine.image_ids() - before if not kept.endswith(image.removeprefix("sha256:"))]
    if made:
        # An intermediate that the kept image still builds on is refused; that is right, so no check.
        engine("rmi", "--force", *made, timeout=300, check=False)


def build_context_files(engine: Engine, workdir: Path) -> set[str]:
    """The files of the build context that the engine sends (after .dockerignore), relative to the repository:
    ``COPY . /`` into an empty image, written out as a folder (--output type=local, BuildKit's and buildah's)."""
    containerfile = workdir / "Containerfile"
    containerfile.write_text("FROM scratch\nCOPY . /\n")
    out, iidfile = workdir / "context", workdir / "iid"
    try:
        engine("build", "--iidfile", str(iidfile), "-f", str(containerfile), "-o", f"type=local,dest={out}", str(REPO), timeout=300)
    finally:
        # Buildah commits the image as well; BuildKit exporting to a folder makes none.
        if iidfile.exists() and iidfile.read_text().strip():
            engine("rmi", "--force", iidfile.read_text().strip(), timeout=60, check=False)
    return {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}


def http_ready(url: str) -> bool:
    """Whether the service at ``url`` answers /health/ready with 200."""
    try:
        return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def image_size_bytes(engine: Engine, image: str) -> int:
    return int(engine("image", "inspect", image, "--format", "{{.Size}}").stdout.strip())


@dataclass
class Container:
    """A detached container of ``image`` whose port 8000 is published on a loopback port."""

    engine: Engine
    name: str
    port: int

    @classmethod
    def start(cls, engine: Engine, image: str, name: str, port: int, env: dict[str, str] | None = None) -> Container:
        settings = [option for key, value in (env or {}).items() for option in ("-e", f"{key}={value}")]
        engine("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", *settings, image, timeout=120)
        return cls(engine, name, port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def exec(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.engine("exec", self.name, *command, timeout=timeout, check=False)

    def inspect(self, template: str) -> str:
        return self.engine("container", "inspect", self.name, "--format", template).stdout.strip()

    def logs(self) -> str:
        result = self.engine("logs", self.name, timeout=60, check=False)
        return (result.stdout + result.stderr)[-6000:]

    def wait_ready(self, timeout: float) -> None:
        """/health/ready answers 200 within ``timeout`` seconds, or an error with the container's logs."""
        try:
            wait_until(lambda: http_ready(self.url) or self.inspect("{{.State.Running}}") != "true", timeout, f"{self.name} ready")
        except TimeoutError as error:
            raise TimeoutError(f"{error}:\n{self.logs()}") from None
        if not http_ready(self.url):
            raise RuntimeError(f"{self.name} stopped before it was ready:\n{self.logs()}")

    def healthcheck_passes(self, timeout: float) -> bool:
        """The image's HEALTHCHECK: Podman without systemd schedules none, so it is run on demand; Docker runs it itself."""
        if self.engine.is_podman:
            return self.engine("healthcheck", "run", self.name, timeout=timeout, check=False).returncode == 0
        try:
            wait_until(lambda: self.inspect("{{.State.Health.Status}}") == "healthy", timeout, f"{self.name} healthy")
        except TimeoutError:
            return False
        return True

    def stop(self, grace_s: int) -> int:
        """SIGTERM, then SIGKILL after ``grace_s``; the exit code."""
        self.engine("stop", "-t", str(grace_s), self.name, timeout=grace_s + 30)
        return int(self.inspect("{{.State.ExitCode}}"))

    def remove(self) -> None:
        self.engine("rm", "--force", self.name, timeout=60, check=False)


def compose_command(engine: Engine) -> list[str]:
    """``docker compose``, or podman-compose from the virtualenv or PATH; ToolMissing where there is none."""
    if not engine.is_podman:
        if engine("compose", "version", check=False).returncode != 0:
            raise ToolMissing("docker has no compose plugin (docker compose)")
        return [engine.binary, "compose"]
    found = shutil.which("podman-compose", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        raise ToolMissing(f"podman-compose is not installed ({INSTALL_HINT})")
    return [found]
