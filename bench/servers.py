"""A server in its own process on a loopback port: start, wait until ready, read its /proc figures, stop.

The one copy for the benchmarks and the tests alike: ``python -m service``, the naive baseline, the service from
an installed wheel, Prometheus. Its log goes to a file that stays readable after the process ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PORT_FIELD = "{port}"  # in a command's argument, replaced by the server's port


class ServerError(RuntimeError):
    """A server that did not start, exited or did not answer; the message carries the end of its log."""


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server: ``command`` (``{port}`` in an argument becomes the port) with ``env`` added to this
    process's environment, less the variables that start with one of ``dropped_env``."""

    name: str
    label: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    port_env: str | None = None  # the variable that takes the port, for a server configured by its environment
    ready_path: str = "/health/ready"
    info_path: str | None = None  # a JSON description of what the server runs on
    metrics_path: str | None = None  # Prometheus text
    cwd: Path = REPO
    dropped_env: tuple[str, ...] = ("DETECTOR_",)  # a setting from the caller's shell must not change what is measured

    def settings(self) -> dict[str, str]:
        """How the server was started, for a record beside its figures: its variables and its arguments."""
        return {**self.env, "command": " ".join(self.command)}


def python_module(module: str, *args: str, python: str | Path = sys.executable) -> tuple[str, ...]:
    """The command ``python -m module args``, by default with this interpreter."""
    return (str(python), "-m", module, *args)


def service_spec(env: Mapping[str, str], name: str = "service", label: str = "service", info_path: str | None = None) -> ServerSpec:
    """``python -m service`` configured by ``env`` (DETECTOR_* variables), on the spec's loopback port."""
    return ServerSpec(
        name=name,
        label=label,
        command=python_module("service"),
        env={"DETECTOR_HOST": HOST, **env},
        port_env="DETECTOR_PORT",
        info_path=info_path,
        metrics_path="/metrics",
    )


def free_port() -> int:
    """A loopback port nothing listens on now (another program may take it before the caller does)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.05) -> None:
    """Polls ``condition`` until it holds; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:g} s")
        time.sleep(every_s)


@dataclass(frozen=True)
class ProcessStats:
    """A process's readings from Linux's /proc."""

    rss_bytes: int
    peak_rss_bytes: int  # VmHWM: the resident set's high-water mark
    open_fds: int
    threads: int


def process_stats(pid: int) -> ProcessStats:
    """Resident memory (now and at its peak), open file descriptors and threads; OSError where /proc does not tell."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    kib = {key: int(status[key].split()[0]) for key in ("VmRSS", "VmHWM")}
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return ProcessStats(kib["VmRSS"] * 1024, kib["VmHWM"] * 1024, fds, int(status["Threads"]))


class ServerProcess:
    """``with ServerProcess(spec) as server:`` starts the server and waits until ``spec.ready_path`` answers 200.

    Or step by step: ``launch()``, then ``wait_ready()`` (a server expected to fail is only launched and
    waited for), ``stop()`` (its exit code), ``close()``. ``port`` reuses a port, say to restart on it.
    """

    def __init__(self, spec: ServerSpec, port: int | None = None) -> None:
        self.spec = spec
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        # Logs go to a file: a pipe nobody reads would fill and stall the server.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in close())
        self._process: subprocess.Popen[bytes] | None = None
        # Loopback: no proxy from the environment.
        self.http = httpx.Client(base_url=self.url, timeout=30.0, trust_env=False)

    def __enter__(self) -> ServerProcess:
        try:
            self.launch()
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise ServerError(f"{self.spec.label} has not been launched")
        return self._process

    def _environment(self) -> dict[str, str]:
        inherited = {key: value for key, value in os.environ.items() if not key.startswith(self.spec.dropped_env)}
        port = {self.spec.port_env: str(self.port)} if self.spec.port_env else {}
        return {**inherited, **self.spec.env, **port}

    def launch(self) -> ServerProcess:
        """Starts the process and returns at once."""
        command = [argument.replace(PORT_FIELD, str(self.port)) for argument in self.spec.command]
        self._process = subprocess.Popen(
            command, cwd=self.spec.cwd, env=self._environment(), stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT
        )
        return self

    def wait_ready(self, timeout_s: float = 180.0, headers: Mapping[str, str] | None = None) -> httpx.Client:
        """Waits until ``spec.ready_path`` answers 200 (asked with ``headers``); the client, with those headers, to talk to it.

        ServerError with the end of the log when the process exits first or is not ready in time.
        """
        self.http.headers.update(headers or {})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"{self.spec.label} exited with {self.process.returncode} at start: {self.output(3000)}")
            try:
                if self.http.get(self.spec.ready_path).status_code == 200:
                    return self.http
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise ServerError(f"{self.spec.label} was not ready within {timeout_s:.0f} s: {self.output(3000)}")

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

    def stats(self) -> ProcessStats:
        return process_stats(self.process.pid)

    def peak_rss_mb(self) -> float | None:
        """The peak resident set size in MiB; None where /proc does not tell."""
        try:
            return round(self.stats().peak_rss_bytes / 2**20, 1)
        except OSError:
            return None

    def output(self, tail: int | None = None) -> str:
        """The log so far (its last ``tail`` characters)."""
        self.log.seek(0)
        text = self.log.read()
        return (text[-tail:] if tail else text).strip()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        """Sends ``sig`` to a running server and waits for it (SIGKILL after ``timeout_s``); the exit code, None if never launched.

        The log stays readable until ``close()``.
        """
        self.http.close()
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(sig)
            try:
                self._process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        return self._process.returncode

    def close(self) -> None:
        self.stop()
        self.log.close()
