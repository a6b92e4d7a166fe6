"""``python -m service``: the server, from the DETECTOR_* settings, with a graceful drain on SIGTERM."""

from __future__ import annotations

import signal
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http import h11_impl

from service import logs
from service.api.problems import problem_response
from service.main import create_app
from service.metrics import Metrics
from service.settings import Settings, SettingsError, load_settings


class DrainingServer(uvicorn.Server):
    """Turns readiness false the moment a stop signal arrives, before uvicorn stops accepting."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        detector = getattr(self.app.state, "detector", None)
        if detector is not None:
            detector.begin_drain()
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
    server = DrainingServer(config, app)
    app.state.on_load_failure = lambda: setattr(server, "should_exit", True)
    # uvicorn re-raises the stop signal after its graceful shutdown, to the handler it found at start;
    # with this one, a drained stop ends the process with 0, as orchestrators expect.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    if app.state.load_error is not None:
        print(f"error: the model could not be loaded: {app.state.load_error}", file=sys.stderr)
        return 3
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
