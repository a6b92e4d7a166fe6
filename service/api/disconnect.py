"""Work for a request stops when its client leaves.

uvicorn does not cancel a request's task when the connection drops, so a
client that gave up would still have its image queued and run. Once the body
is read, the only message left on the request's channel is the disconnect:
waiting for it beside the work, and cancelling the work when it comes, lets
the batcher drop a queued request before inference.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

from service.errors import ClientClosedRequest

T = TypeVar("T")


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Runs ``work``; raises ClientClosedRequest, having cancelled it, if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        watcher.cancel()
    if task.cancelled():
        raise ClientClosedRequest("the client closed the connection before its answer was ready")
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
