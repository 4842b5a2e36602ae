"""A thin pure-ASGI step in front of Quart that serves public ``GET /stream`` itself.

Measured on the 10,000-stream bench (`bench/sse_bench.py`), Quart's per-request machinery
(request object and context, URL matching, two tasks per request) was most of the cost
of opening a stream and a third of its memory.  `pushsvc serve` puts this step inside the
request-context wrapper (`pushsvc.asgi`: request ids, access log) and in front of Quart.
It answers ``GET /stream`` when the request is plain -- valid public channels, no CORS
configured -- with the same `new_session` and the same `StreamSession` as the Quart route;
anything else (private channels and their tokens, CORS, every error answer) is handed to
Quart untouched, so those answers stay exactly the route's.

Disconnects: Hypercorn does not cancel a bare ASGI app when the peer goes away, it sends
``http.disconnect`` through ``receive()``.  So a small watcher awaits ``receive()`` and,
on disconnect, cancels the stream's task -- what Quart does for its routes -- so the
session's ``finally`` (removal from the hub) runs at once, idle stream or not.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl

import werkzeug.urls  # noqa: F401  (registers the 'werkzeug.url_quote' codec error handler)

from .asgi import STREAM_KEY, Receive, Scope, Send
from .auth import Authority
from .errors import ApiError
from .routes.stream import STREAM_HEADERS, new_session, requested_channels
from .runtime import Runtime
from .session import StreamSession

_HEADERS = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in STREAM_HEADERS.items()]
_END = {"type": "http.response.body", "body": b"", "more_body": False}


def _query(scope: Scope) -> tuple[list[str], str | None]:
    """(channel values, lastEventId) from the query string, parsed exactly as werkzeug's
    ``request.args`` (invalid bytes stay percent-encoded); ValueError if it is not UTF-8."""
    channels: list[str] = []
    last_id: str | None = None
    query = scope.get("query_string", b"").decode()
    for key, value in parse_qsl(query, keep_blank_values=True, errors="werkzeug.url_quote"):
        if key == "channel":
            channels.append(value)
        elif key == "lastEventId" and last_id is None:
            last_id = value
    return channels, last_id


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class StreamFastPath:
    """ASGI app: plain ``GET /stream`` served directly, everything else by `inner` (Quart)."""

    def __init__(self, inner: Any, app: Any) -> None:
        self.inner = inner
        self.rt: Runtime = app.extensions["pushsvc"]
        self.authority: Authority = app.extensions["pushsvc.auth"]
        self.enabled = not self.rt.settings.cors_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.enabled and scope["type"] == "http" and scope["path"] == "/stream" and scope["method"] == "GET":
            session = self._open(scope)
            if session is not None:
                await self._serve(scope, session, receive, send)
                return
        await self.inner(scope, receive, send)

    def _open(self, scope: Scope) -> StreamSession | bytes | None:
        """The session (or over-capacity body), or None to let the Quart route answer."""
        try:
            channel_values, query_last_id = _query(scope)
            channels = requested_channels(channel_values, self.rt.settings.max_channels_per_stream)
        except (ApiError, ValueError):
            return None
        if self.authority.private_of(channels):
            return None
        last_id = _header(scope, b"last-event-id") or query_last_id
        return new_session(self.rt, channels, last_id, None)

    async def _serve(self, scope: Scope, opened: StreamSession | bytes, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(_HEADERS)})
        if isinstance(opened, bytes):
            await send({"type": "http.response.body", "body": opened, "more_body": False})
            return
        scope[STREAM_KEY] = opened  # the access log reads events sent and the end reason
        task = asyncio.current_task()
        assert task is not None
        disconnected = False

        def on_disconnect(watcher: asyncio.Task[None]) -> None:
            nonlocal disconnected
            if not watcher.cancelled():
                disconnected = True
                task.cancel()

        watcher = asyncio.get_running_loop().create_task(_until_disconnect(receive))
        watcher.add_done_callback(on_disconnect)
        body = opened.frames()
        try:
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send(_END)
        except asyncio.CancelledError:
            if not disconnected:
                raise
            task.uncancel()
        finally:
            watcher.remove_done_callback(on_disconnect)
            watcher.cancel()
            await body.aclose()
