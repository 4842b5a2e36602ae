"""The fast door: a thin pure-ASGI app in front of Quart, mounted by `create_app` itself
(so `pushsvc serve`, plain ``hypercorn "pushsvc.app:create_app()"`` and the Quart test
client all run it), that serves ``GET /stream`` and plain ``POST /publish``.

Measured on the 10,000-stream bench (`bench/sse_bench.py`), Quart's per-request machinery
(request object and context, URL matching, two tasks per request) was most of the cost
of opening a stream and a third of its memory.  The ASGI chain is
``RequestContext`` (`pushsvc.asgi`: request ids, access log) -> this -> Quart's own.

``GET /stream`` on public channels (no CORS configured) is answered here with the core's
`stream_request`, `requested_channels`, `new_session` and `pump` -- the code the Quart route
runs -- and every error with the core's one renderer; private channels (their tokens need
cookies) and every request when CORS is configured go to the Quart route.

``POST /publish`` (Quart was ~40% of a single-event publish): answered here when the
request is plain -- no CORS configured, no ``Origin`` header, a ``Content-Length`` no larger
than ``PUSHSVC_MAX_BODY_BYTES`` -- by the core's `publish_request`, every ApiError rendered
by the core's renderer (as `app.py`'s handlers render them).  Anything else (chunked
bodies, oversized ones, CORS) goes to Quart.  The body is read within Quart's
``BODY_TIMEOUT`` (else 408, as Quart; checked once a second rather than with a timer per
request); a client that disconnects mid-body gets nothing, as with Quart; any unexpected
exception is logged and answered with the JSON 500.

Disconnects: Hypercorn does not cancel a bare ASGI app when the peer goes away, it sends
``http.disconnect`` through ``receive()``.  So a small watcher awaits ``receive()`` and,
on disconnect, cancels the stream's task -- what Quart does for its routes -- so the
pump's ``finally`` (removal from the hub) runs at once, idle stream or not.  A stream the
hub interrupts (write deadline, overflow while a write is stuck) is cancelled the same way
and its response simply ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, RequestTimeout

from .asgi import RAW_SEND_KEY, REQUEST_ID_KEY, STATUS_KEY, STREAM_KEY, Message, Receive, Scope, Send
from .auth import Authority
from .core.errors import JSON_TYPE, ApiError, internal_error, render_error
from .core.publishing import answer_bytes, publish_request
from .core.streams import PumpedBody, new_session, pump, requested_channels, stream_headers_raw, stream_request
from .errors import from_http_exception
from .runtime import Runtime
from .session import StreamSession

_HEADERS = stream_headers_raw()
_JSON_TYPE = JSON_TYPE.encode()
_END = {"type": "http.response.body", "body": b"", "more_body": False}

log = logging.getLogger("pushsvc.app")  # where app.py logs unexpected errors


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def _pumping(send: Send, raw_send: Send) -> Send:
    """Quart's ``send`` for a ``GET /stream`` it answers: the route's `PumpedBody` is written
    by the one stream pump, with the server's own ``send`` (as the fast door's streams)."""

    async def send_or_pump(message: MutableMapping[str, Any]) -> None:
        body = message.get("body")
        if type(body) is PumpedBody:
            await pump(body.session, raw_send)
        else:
            await send(message)

    return send_or_pump


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _queued(receive: Receive) -> list[Message]:
    """The ASGI messages already waiting, taken, up to the one that ends the body (or a
    disconnect); [] when nothing waits.  Hypercorn's ``receive`` is its queue's ``get``, and
    a request body that came with its headers is queued before the app runs (as a part and
    then the end of the body, ``more_body=False`` with nothing in it): taking it needs no
    task step and no deadline."""
    queue = getattr(receive, "__self__", None)
    taken: list[Message] = []
    if type(queue) is asyncio.Queue:
        while not queue.empty():
            message: Message = queue.get_nowait()
            taken.append(message)
            if _ends_body(message):
                break
    return taken


def _ends_body(message: Message) -> bool:
    """Whether no ``http.request`` message follows `message` (the last part, or a disconnect)."""
    kind = message["type"]
    return kind == "http.disconnect" or (kind == "http.request" and not message.get("more_body", False))


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


class _BodyDeadlines:
    """Body reads in progress and when each must end: one ticker (every second, or the
    timeout when it is shorter, only while some read waits) cancels the overdue ones, whose
    read then raises 408 -- instead of an ``asyncio.timeout`` (a timer) per request, most of
    whose bodies arrive with their headers.  A read ends within the timeout plus one tick."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._reading: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.TimerHandle | None = None

    async def read(self, read: Callable[[], Awaitable[bytes]]) -> bytes:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._reading[task] = loop.time() + self.seconds
        if self._ticker is None:
            self._ticker = loop.call_later(self._tick_seconds(), self._tick)
        try:
            return await read()
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            task.uncancel()
            raise RequestTimeout() from None
        finally:
            del self._reading[task]
            self._expired.discard(task)

    def _tick_seconds(self) -> float:
        return min(1.0, self.seconds)

    def _tick(self) -> None:
        now = asyncio.get_running_loop().time()
        for task, deadline in self._reading.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._ticker = None
        if self._reading:
            self._ticker = asyncio.get_running_loop().call_later(self._tick_seconds(), self._tick)


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
        self._deadlines: _BodyDeadlines | None = None
        provider = app.json
        # Quart's JSON answers (`provider.response()`) are `json_bytes` unless in debug mode.
        compact = provider.compact if provider.compact is not None else not app.debug
        self.publish_enabled = self.enabled and compact and isinstance(self.max_body, int)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The request's coroutine, to await (a plain function: one frame less for every
        request's task to resume through)."""
        if self.enabled and scope["type"] == "http":
            path = scope["path"]
            if path == "/stream" and scope["method"] == "GET":
                try:
                    opened = self._open(scope)
                except ApiError as error:
                    return self._answer(send, *render_error(error))
                if opened is not None:
                    return self._serve(scope, opened, receive, send)
            elif path == "/publish" and self.publish_enabled and scope["method"] == "POST":
                try:
                    plain = _publish_headers(scope, self.max_body)
                except Exception:  # pragma: no cover - headers Hypercorn accepted; Quart will answer
                    plain = None
                if plain is not None:
                    return self._publish(scope, plain, receive, send)
        if scope["type"] == "http" and not _utf8(scope.get("query_string", b"")):
            # Quart's URL matching decodes the query string unguarded: it would crash (500).
            return self._answer(send, *render_error(ApiError("invalid_query", "the query string is not UTF-8")))
        if scope["type"] == "http" and scope["path"] == "/stream":
            send = _pumping(send, scope.get(RAW_SEND_KEY, send))
        inner: Awaitable[None] = self.inner(scope, receive, send)
        return inner

    # -- POST /publish -------------------------------------------------------------------

    async def _publish(
        self, scope: Scope, plain: tuple[str | None, str | None, str | None], receive: Receive, send: Send
    ) -> None:
        authorization, content_type, idempotency_key = plain

        def read_body() -> bytes | Awaitable[bytes]:
            taken = _queued(receive)
            if taken and _ends_body(taken[-1]):  # it came with the headers: nothing to wait for
                if len(taken) == 1 and taken[0]["type"] == "http.request":
                    return self._whole(taken[0])
                return self._read_body(receive, taken)  # (returns without waiting)
            if self.body_timeout is None:
                return self._read_body(receive, taken)
            if self._deadlines is None or self._deadlines.seconds != self.body_timeout:
                self._deadlines = _BodyDeadlines(self.body_timeout)
            return self._deadlines.read(lambda: self._read_body(receive, taken))

        try:
            result, status, headers = await publish_request(
                self.rt, self.authority, authorization, content_type, read_body, idempotency_key
            )
        except _Disconnected:
            return
        except ApiError as error:
            await self._answer(send, *render_error(error))
        except HTTPException as error:
            await self._answer(send, *render_error(from_http_exception(error)))
        except Exception:
            log.exception("unexpected error")
            await self._answer(send, *render_error(internal_error()))
        else:
            body = answer_bytes(result)
            raw_send = scope.get(RAW_SEND_KEY)
            request_id = scope.get(REQUEST_ID_KEY)
            if raw_send is None or request_id is None:  # not behind RequestContext
                await self._answer(send, status, headers, body)
                return
            # The request-id wrapper's work done here, straight to the server's `send`.
            start = [(b"content-type", _JSON_TYPE), (b"content-length", b"%d" % len(body))]
            if headers:
                start += [(key.lower().encode(), value.encode()) for key, value in headers.items()]
            start.append((b"x-request-id", request_id.encode("latin-1")))
            scope[STATUS_KEY] = status
            await raw_send({"type": "http.response.start", "status": status, "headers": start})
            await raw_send({"type": "http.response.body", "body": body, "more_body": False})

    @staticmethod
    async def _answer(
        send: Send, status: int, headers: dict[str, str], body: bytes, send_body: Send | None = None
    ) -> None:
        """A JSON answer, with the headers Quart would give it; `send_body`: the server's own
        ``send`` for the body (only the start message needs the request-id wrapper)."""
        start = [(b"content-type", JSON_TYPE.encode()), (b"content-length", str(len(body)).encode())]
        start += [(key.lower().encode(), value.encode()) for key, value in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": start})
        await (send_body or send)({"type": "http.response.body", "body": body, "more_body": False})

    def _whole(self, message: Message) -> bytes:
        """The body of a single ``http.request`` message that has it all; 413 past the limit."""
        chunk = message.get("body", b"")
        if len(chunk) > self.max_body:
            raise RequestEntityTooLarge()
        return bytes(chunk)

    async def _read_body(self, receive: Receive, taken: list[Message]) -> bytes:
        """The request body: every ``http.request`` message (`taken`: those already taken,
        in order) until ``more_body`` is false (h11 and h2 hold it to the Content-Length);
        _Disconnected if the client goes away first; 413 past the limit, as Quart."""
        chunks: list[bytes] = []
        size = 0
        queued = iter(taken)
        while True:
            message = next(queued, None)
            if message is None:
                message = await receive()
            if message["type"] != "http.request":
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                continue
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            if not more and not chunks:
                return self._whole(message)
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body:
                raise RequestEntityTooLarge()
            if not more:
                return b"".join(chunks)

    # -- GET /stream ---------------------------------------------------------------------

    def _open(self, scope: Scope) -> StreamSession | bytes | None:
        """The session (or over-capacity body), None to let the Quart route answer (private
        channels), or ApiError."""
        channel_values, last_id = stream_request(scope.get("query_string", b""), scope["headers"])
        channels = requested_channels(channel_values, self.rt.settings.max_channels_per_stream)
        if self.authority.private_of(channels) or b"rewind=" in scope.get("query_string", b""):
            return None  # tokens, the app's callback and rewind are the Quart route's
        return new_session(self.rt, channels, last_id, None)

    async def _serve(self, scope: Scope, opened: StreamSession | bytes, receive: Receive, send: Send) -> None:
        if isinstance(opened, bytes):  # over capacity: the whole body, with its length (as Quart)
            length = (b"content-length", str(len(opened)).encode())
            await send({"type": "http.response.start", "status": 200, "headers": [*_HEADERS, length]})
            await send({"type": "http.response.body", "body": opened, "more_body": False})
            return
        await send({"type": "http.response.start", "status": 200, "headers": list(_HEADERS)})
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
        try:
            await pump(opened, send_body)
            await send_body(_END)
        except asyncio.CancelledError:
            if not disconnected and opened.subscriber.aborted is None:
                raise
            task.uncancel()  # the peer left, or the hub ended a stuck write: just end
        finally:
            watcher.remove_done_callback(on_disconnect)
            watcher.cancel()
