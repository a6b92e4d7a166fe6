"""A server under test in its own process, on a free loopback port: start, wait for ready, peak RSS, stop."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A server that did not start or answer; the message carries the end of its log."""


@dataclass(frozen=True)
class ServerSpec:
    """How to start one system: ``python -m <module> <args>`` with ``env`` added to a DETECTOR_-free environment."""

    name: str
    label: str
    module: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    ready_path: str = "/health/ready"
    info_path: str | None = None  # a JSON description of what the server runs on
    metrics_path: str | None = None  # Prometheus text
    port_env: str | None = None  # the variable that takes the port; None: a --port option

    def settings(self) -> dict[str, str]:
        return {**self.env, **({"args": " ".join(self.args)} if self.args else {})}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set size (Linux VmHWM), in MB; None where /proc does not tell."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


class ServerProcess:
    """``with ServerProcess(spec) as server:`` starts the server and waits until ``spec.ready_path`` answers 200."""

    def __init__(self, spec: ServerSpec, ready_timeout_s: float = 180.0) -> None:
        self.spec = spec
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.ready_timeout_s = ready_timeout_s
        # Logs go to a file: a pipe nobody reads would fill and stall the server.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop())
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30.0, trust_env=False)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()

    def _environment(self) -> dict[str, str]:
        inherited = {key: value for key, value in os.environ.items() if not key.startswith("DETECTOR_")}
        port = {self.spec.port_env: str(self.port)} if self.spec.port_env else {}
        return {**inherited, **self.spec.env, **port}

    def start(self) -> None:
        command = [sys.executable, "-m", self.spec.module, *self.spec.args]
        if self.spec.port_env is None:
            command += ["--host", HOST, "--port", str(self.port)]
        self.process = subprocess.Popen(
            command, cwd=REPO, env=self._environment(), stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            self._wait_ready()
        except ServerError:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"{self.spec.label} exited at start: {self.output()}")
            try:
                if self.http.get(self.spec.ready_path).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise ServerError(f"{self.spec.label} was not ready within {self.ready_timeout_s:.0f} s: {self.output()}")

    def get(self, path: str) -> httpx.Response:
        try:
            response = self.http.get(path)
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise ServerError(f"{self.spec.label}: GET {path} failed: {error}") from error
        return response

    def info(self) -> dict[str, Any]:
        return self.get(self.spec.info_path).json() if self.spec.info_path else {}

    def metrics(self) -> str | None:
        return self.get(self.spec.metrics_path).text if self.spec.metrics_path else None

    def peak_rss_mb(self) -> float | None:
        return peak_rss_mb(self.process.pid) if self.process is not None else None

    def output(self, tail: int = 3000) -> str:
        self.log.seek(0)
        return self.log.read()[-tail:].strip()

    def stop(self) -> None:
        self.http.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
