"""``python -m service``: the server, from the DETECTOR_* settings, with a graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http import h11_impl

from service import logs
from service.api.problems import problem_response
from service.main import create_app
from service.metrics import Metrics
from service.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from service.grpc.server import GrpcServer


class DrainingServer(uvicorn.Server):
    """Turns readiness false the moment a stop signal arrives, before uvicorn stops accepting.

    With DETECTOR_GRPC_PORT, it also serves gRPC (service/grpc/) in the same event loop: started once HTTP
    listens, and on the stop signal drained beside HTTP's connections (no new RPC, those in flight finish
    within the grace), before the lifespan closes the detector that both protocols share.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, settings: Settings | None = None) -> None:
        super().__init__(config)
        self.app = app
        self.settings = settings
        self.grpc: GrpcServer | None = None
        self.grpc_error: str | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started or self.settings is None or not self.settings.grpc_port:
            return
        # Imported only when asked for: grpcio is not loaded into a server that does not speak gRPC.
        from service.grpc.server import GrpcServer

        server = GrpcServer(self.app, self.settings)
        try:
            await server.start()
        except RuntimeError as error:
            self.grpc_error, self.should_exit = str(error), True
            return
        self.grpc = server

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.grpc is not None and self.settings is not None:
            grpc_drained = asyncio.create_task(self.grpc.stop(self.settings.shutdown_grace_s))
            close_app = self.lifespan.shutdown

            async def close_app_after_grpc() -> None:
                await grpc_drained
                await close_app()

            self.lifespan.shutdown = close_app_after_grpc
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.app.state.repository.begin_drain()
        super().handle_exit(sig, frame)


def check_runtime(settings: Settings) -> None:
    """Settings that only this machine can refuse: execution providers its onnxruntime lacks."""
    if settings.engine in ("auto", "onnxruntime"):
        import onnxruntime

        from service.engines.onnxruntime import choose_providers

        try:
            choose_providers(settings.provider_list, onnxruntime.get_available_providers())
        except RuntimeError as error:
            raise SettingsError(str(error)) from error


def answer_connection_limit_with_a_problem(metrics: Metrics) -> None:
    """uvicorn answers a request past DETECTOR_MAX_CONNECTIONS itself, as a bare text 503, before the app
    sees it; its h11 protocol looks that answer up by name at each request, so ours takes its place:
    problem JSON with Retry-After, counted as a rejection."""
    refusal = problem_response(
        503,
        "Too Many Connections",
        "the server holds as many connections as it allows; retry shortly",
        "/problems/too-many-connections",
        {"Retry-After": "1", "Connection": "close"},
    )

    async def service_unavailable(scope: Scope, receive: Receive, send: Send) -> None:
        metrics.rejected.labels(reason="connections").inc()
        await refusal(scope, receive, send)

    h11_impl.service_unavailable = service_unavailable  # type: ignore[assignment]


def main() -> int:
    try:
        settings = load_settings()
        check_runtime(settings)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # One process: one model copy; batches are not split between workers.
        workers=1,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        # Limits before any of our code runs: connections (503 beyond), header size (400 beyond), idle keep-alive.
        limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=int(settings.keep_alive_s),
        http="h11",
    )
    answer_connection_limit_with_a_problem(app.state.metrics)
    server = DrainingServer(config, app, settings)
    app.state.on_load_failure = lambda: setattr(server, "should_exit", True)
    # uvicorn re-raises the stop signal after its graceful shutdown, to the handler it found at start;
    # with this one, a drained stop ends the process with 0, as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    if server.grpc_error is not None:
        print(f"error: {server.grpc_error}", file=sys.stderr)
        return 1
    if app.state.load_error is not None:
        print(f"error: the model could not be loaded: {app.state.load_error}", file=sys.stderr)
        return 3
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
