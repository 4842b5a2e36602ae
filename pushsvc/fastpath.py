"""A thin pure-ASGI step in front of Quart that serves public ``GET /stream`` and plain
``POST /publish`` itself.

Measured on the 10,000-stream bench (`bench/sse_bench.py`), Quart's per-request machinery
(request object and context, URL matching, two tasks per request) was most of the cost
of opening a stream and a third of its memory.  `pushsvc serve` puts this step inside the
request-context wrapper (`pushsvc.asgi`: request ids, access log) and in front of Quart.
It answers ``GET /stream`` when the request is plain -- valid public channels, no CORS
configured -- with the same `new_session` and the same `StreamSession` as the Quart route;
anything else (private channels and their tokens, CORS, every error answer) is handed to
Quart untouched, so those answers stay exactly the route's.

``POST /publish`` (Quart was ~40% of a single-event publish): answered here when the
request is plain -- no CORS configured, no ``Origin`` header, a ``Content-Length`` no larger
than ``PUSHSVC_MAX_BODY_BYTES`` -- by the same `publish_request` as the Quart route, and
every ApiError rendered as `app.py` renders it (the same JSON bytes: Quart's compact,
sorted ``json.dumps`` plus a newline; the same status and headers).  Anything else (chunked
bodies, oversized ones, CORS) goes to Quart.  The body is read within Quart's
``BODY_TIMEOUT`` (else 408, as Quart); a client that disconnects mid-body gets nothing, as
with Quart; any unexpected exception is logged and answered with the JSON 500.

Disconnects: Hypercorn does not cancel a bare ASGI app when the peer goes away, it sends
``http.disconnect`` through ``receive()``.  So a small watcher awaits ``receive()`` and,
on disconnect, cancels the stream's task -- what Quart does for its routes -- so the
session's ``finally`` (removal from the hub) runs at once, idle stream or not.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qsl

import werkzeug.urls  # noqa: F401  (registers the 'werkzeug.url_quote' codec error handler)
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout

from .asgi import RAW_SEND_KEY, STREAM_KEY, Receive, Scope, Send
from .auth import Authority
from .errors import ApiError, from_http_exception, internal_error
from .routes.publish import publish_request
from .routes.stream import STREAM_HEADERS, new_session, requested_channels
from .runtime import Runtime
from .session import StreamSession

_HEADERS = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in STREAM_HEADERS.items()]
_END = {"type": "http.response.body", "body": b"", "more_body": False}
_JSON_HEADER = (b"content-type", b"application/json")

log = logging.getLogger("pushsvc.app")  # where app.py logs unexpected errors


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


class _Disconnected(Exception):
    """The client went away before its whole body arrived."""


def _publish_headers(scope: Scope, max_body: int) -> tuple[str | None, str | None, str | None] | None:
    """(Authorization, Content-Type, Idempotency-Key) of a plain publish request -- the first of each, as
    werkzeug's ``headers.get``; with a Content-Length within `max_body` -- or None to let
    Quart answer it."""
    authorization: str | None = None
    content_type: str | None = None
    idempotency_key: str | None = None
    length = -1
    for key, value in scope["headers"]:
        key = key.lower()
        if key == b"authorization":
            if authorization is None:
                authorization = value.decode("latin-1")
        elif key == b"content-type":
            if content_type is None:
                content_type = value.decode("latin-1")
        elif key == b"idempotency-key":
            if idempotency_key is None:
                idempotency_key = value.decode("latin-1")
        elif key == b"content-length":
            if length < 0:
                if not value.isdigit():
                    return None
                length = int(value)
        elif key == b"origin" or key == b"transfer-encoding":
            return None
    if length < 0 or length > max_body:
        return None
    return authorization, content_type, idempotency_key


class FastPath:
    """ASGI app: plain ``GET /stream`` and ``POST /publish`` served directly, everything
    else by `inner` (Quart)."""

    def __init__(self, inner: Any, app: Any) -> None:
        self.inner = inner
        self.rt: Runtime = app.extensions["pushsvc"]
        self.authority: Authority = app.extensions["pushsvc.auth"]
        self.enabled = not self.rt.settings.cors_origins
        self.max_body: int = app.config["MAX_CONTENT_LENGTH"]
        self.body_timeout: float | None = app.config["BODY_TIMEOUT"]
        provider = app.json
        # Quart's JSON answers: `provider.response()`, compact unless in debug mode.
        compact = provider.compact if provider.compact is not None else not app.debug
        self.dumps = provider.dumps
        self.publish_enabled = self.enabled and compact and isinstance(self.max_body, int)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.enabled and scope["type"] == "http":
            path = scope["path"]
            if path == "/stream" and scope["method"] == "GET":
                session = self._open(scope)
                if session is not None:
                    await self._serve(scope, session, receive, send)
                    return
            elif path == "/publish" and self.publish_enabled and scope["method"] == "POST":
                try:
                    plain = _publish_headers(scope, self.max_body)
                except Exception:  # pragma: no cover - headers Hypercorn accepted; Quart will answer
                    plain = None
                if plain is not None:
                    await self._publish(plain, receive, send)
                    return
        await self.inner(scope, receive, send)

    # -- POST /publish -------------------------------------------------------------------

    async def _publish(
        self, plain: tuple[str | None, str | None, str | None], receive: Receive, send: Send
    ) -> None:
        authorization, content_type, idempotency_key = plain
        headers: dict[str, str] = {}

        async def read_body() -> bytes:
            if self.body_timeout is None:
                return await self._read_body(receive)
            try:
                async with asyncio.timeout(self.body_timeout):
                    return await self._read_body(receive)
            except TimeoutError:
                raise RequestTimeout() from None

        try:
            body, status, headers = await publish_request(
                self.rt, self.authority, authorization, content_type, read_body, idempotency_key
            )
        except _Disconnected:
            return
        except ApiError as error:
            body, status, headers = error.body(), error.status, error.headers
        except HTTPException as error:
            api_error = from_http_exception(error)
            body, status, headers = api_error.body(), api_error.status, api_error.headers
        except Exception:
            log.exception("unexpected error")
            api_error = internal_error()
            body, status, headers = api_error.body(), api_error.status, api_error.headers
        data = self.dumps(body, separators=(",", ":"))
        encoded = f"{data}\n".encode()
        start = [_JSON_HEADER, (b"content-length", str(len(encoded)).encode())]
        for key, value in headers.items():
            start.append((key.lower().encode(), value.encode()))
        await send({"type": "http.response.start", "status": status, "headers": start})
        await send({"type": "http.response.body", "body": encoded, "more_body": False})

    async def _read_body(self, receive: Receive) -> bytes:
        """The request body: every ``http.request`` message until ``more_body`` is false
        (h11 and h2 hold it to the Content-Length); _Disconnected if the client goes away
        first; 413 past the limit, as Quart."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                continue
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            if not more and not chunks:
                if len(chunk) > self.max_body:
                    raise RequestEntityTooLarge()
                return bytes(chunk)
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body:
                raise RequestEntityTooLarge()
            if not more:
                return b"".join(chunks)

    # -- GET /stream ---------------------------------------------------------------------

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
        # Body chunks go straight to the server: only the start message needs the wrapper.
        send_body = scope.get(RAW_SEND_KEY, send)
        opened.start()
        try:
            chunk, done = await opened.first_chunk()
            await send_body({"type": "http.response.body", "body": chunk, "more_body": True})
            while not done:
                next_chunk, done = await opened.next_chunk()
                if next_chunk is not None:
                    await send_body({"type": "http.response.body", "body": next_chunk, "more_body": True})
            await send_body(_END)
        except asyncio.CancelledError:
            if not disconnected:
                raise
            task.uncancel()
        finally:
            watcher.remove_done_callback(on_disconnect)
            watcher.cancel()
            opened.stop()
