"""The grpcio server: on DETECTOR_GRPC_PORT, in the HTTP server's event loop, drained with it.

It runs beside uvicorn in one process and one event loop, so a gRPC request
shares everything with an HTTP one: the detector and its batcher (the two
protocols' images fill the same batches), admission, deadlines, keys and
metrics. On a stop signal it stops taking RPCs and lets those in flight finish
within the drain grace; the detector closes only after that.
"""

from __future__ import annotations

import logging

import grpc
from fastapi import FastAPI
from tritonclient.grpc import service_pb2_grpc

from service.grpc.servicer import Servicer
from service.settings import Settings

log = logging.getLogger(__name__)
MIB = 1024 * 1024


class GrpcServer:
    """``await start()`` binds and serves; ``await stop(grace)`` refuses new RPCs and waits for those in flight up to ``grace`` s."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.address = f"[{settings.host}]:{settings.grpc_port}" if ":" in settings.host else f"{settings.host}:{settings.grpc_port}"
        limit = settings.grpc_max_message_mb * MIB
        options = [
            # A message past the limit is refused by grpcio itself with RESOURCE_EXHAUSTED before any of our code runs.
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # grpcio shares a port with any other process that asks (SO_REUSEPORT): a second server on the
            # same port would take half the calls, unnoticed. A port in use stops the start instead.
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(options=options)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(app), self.server)

    async def start(self) -> None:
        """Binds the port (RuntimeError naming the address when it cannot) and starts serving."""
        try:
            self.server.add_insecure_port(self.address)
        except RuntimeError as error:
            raise RuntimeError(f"the gRPC server cannot listen on {self.address} (DETECTOR_GRPC_PORT): {error}") from error
        await self.server.start()
        log.info("gRPC listening", extra={"address": self.address})

    async def stop(self, grace_s: float) -> None:
        await self.server.stop(grace_s)
