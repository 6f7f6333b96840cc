"""Waiting on a request while watching its client: SSE framing and cancel-on-disconnect.

A client that goes away cancels its request, so its KV blocks are freed at once. Streams see it
as a cancelled generator (Starlette listens for ``http.disconnect`` while streaming); whole
responses poll ``request.is_disconnected()`` while they wait.
"""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from .driver import Done, RequestHandle
from .errors import APIError

POLL_S = 0.5


class ClientGone(Exception):
    pass


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


async def wait_done(handle: RequestHandle, request: Request) -> Done:
    """The finished request (deltas are dropped); cancels it and raises ClientGone if the client left."""
    loop = asyncio.get_running_loop()
    check_at = loop.time() + POLL_S
    try:
        while True:
            try:
                item = await asyncio.wait_for(handle.next(), POLL_S)
            except asyncio.TimeoutError:
                item = None
            if isinstance(item, Done):
                return item
            if loop.time() >= check_at:  # deltas may arrive faster than POLL_S: check on a clock
                check_at = loop.time() + POLL_S
                if await request.is_disconnected():
                    raise ClientGone()
    finally:
        handle.cancel()


def stream_response(chunks: AsyncIterator[str], handles: list[RequestHandle]) -> StreamingResponse:
    """SSE response over ``chunks``; the handles are cancelled when the stream ends early for any reason."""
    async def body():
        try:
            async for chunk in chunks:
                yield chunk
        except APIError as e:  # the request failed mid-stream: tell the client in the stream
            yield sse(e.body())
        finally:
            for h in handles:
                h.cancel()
        yield sse("[DONE]")

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
