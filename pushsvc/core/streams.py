"""Opening a stream and pumping its body, without a web framework; both doors use these.

* `stream_request` reads what a ``GET /stream`` asks for (channel values and the resume id)
  from the ASGI scope, as werkzeug's ``request.args`` / ``headers.get`` would;
* `requested_channels` validates the channel list, `new_session` makes the `StreamSession`
  (resume position, capacity) or the over-capacity body;
* `pump` is the one loop that writes a session's body chunks with the server's ``send``,
  for the fast door and for the Quart route alike (whose body, `PumpedBody`, the fast door
  hands to `pump`).  It owns the write deadline: it
  marks on the stream's `StreamQueue` since when a write is pending (``writing_since``) and
  which task waits on it, so that the hub's ticker (``PUSHSVC_WRITE_TIMEOUT_SECONDS``) or
  an overflow can end a stream whose peer stopped reading by cancelling that task; the
  pump's ``finally`` then releases queue and session at once.  With a write delay
  (``PUSHSVC_WRITE_DELAY_MS``) it also makes the stream cool as each write starts
  (`pushsvc.hub.Hub.cool`), so that the next chunk collects what arrives meanwhile.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote

from .. import sse
from ..events import DEFAULT_CHANNEL, EventError, check_channel
from ..resume import parse_stream_id
from ..session import StreamSession, jittered
from .errors import ApiError

if TYPE_CHECKING:
    from ..runtime import Runtime

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]  # ASGI's send

STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def _keep_percent_encoded(error: UnicodeError) -> tuple[str, int]:
    # werkzeug's "werkzeug.url_quote" handler: invalid bytes stay percent-encoded.
    assert isinstance(error, UnicodeDecodeError)
    return quote(error.object[error.start:error.end], safe=""), error.end


codecs.register_error("pushsvc.url_quote", _keep_percent_encoded)


def stream_request(query_string: bytes, headers: Iterable[tuple[bytes, bytes]]) -> tuple[list[str], str | None]:
    """(channel values, resume id) of a ``GET /stream``: every ``channel`` parameter, and
    the first ``Last-Event-ID`` header, else the first ``lastEventId`` parameter."""
    try:
        query = query_string.decode()
    except UnicodeDecodeError:
        raise ApiError("invalid_query", "the query string is not UTF-8") from None
    channels: list[str] = []
    query_last_id: str | None = None
    for key, value in parse_qsl(query, keep_blank_values=True, errors="pushsvc.url_quote"):
        if key == "channel":
            channels.append(value)
        elif key == "lastEventId" and query_last_id is None:
            query_last_id = value
    for name, raw in headers:
        if name.lower() == b"last-event-id":
            return channels, raw.decode("latin-1") or query_last_id
    return channels, query_last_id


def requested_channels(values: list[str], limit: int) -> tuple[str, ...]:
    if len(values) > limit:
        raise ApiError("too_many_channels", f"at most {limit} channels per stream")
    try:
        return tuple(sorted({check_channel(v) for v in values or [DEFAULT_CHANNEL]}))
    except EventError as exc:
        raise ApiError(exc.code, exc.detail) from None


def over_capacity_body(retry_ms: int) -> bytes:
    return b": over capacity, retry later\n" + sse.retry(jittered(max(retry_ms, 1000) * 2))


def new_session(
    rt: Runtime, channels: tuple[str, ...], last_id: str | None, expires_at: float | None
) -> StreamSession | bytes:
    """A session for validated, authorized channels, or the whole over-capacity body."""
    settings = rt.settings
    resume = parse_stream_id(last_id, len(channels)) if last_id else None
    if rt.hub.draining or rt.hub.stream_count >= settings.max_streams:
        rt.metrics.streams_refused_capacity += 1
        return over_capacity_body(settings.retry_ms)
    session = StreamSession(
        rt.hub, rt.metrics, channels, resume,
        unreadable_id=bool(last_id) and resume is None,
        retry_ms=settings.retry_ms,
        queue_size=settings.queue_size,
        queue_bytes=settings.queue_bytes,
        expires_at=expires_at,
    )
    rt.metrics.streams_opened += 1
    return session


async def pump(session: StreamSession, send: Send) -> None:
    """The whole body of a stream but its end: subscribe, write the opening chunk, then each
    next chunk until the session ends it, as ASGI ``http.response.body`` messages (the
    caller sends the final one); unsubscribe in ``finally`` whatever happens.

    The task that calls this is the one `StreamQueue.interrupt` cancels when a write is
    stuck (the fast door then ends the response quietly; under Quart the cancelled handler
    task ends it), and ``end_reason`` tells the access log why.
    """
    sub = session.subscriber
    sub.task = asyncio.current_task()
    hub = session.hub
    metrics = session.metrics
    delay = hub.write_delay  # 0: every chunk written at once
    session.start()
    try:
        chunk: bytes | None
        chunk, done = await session.first_chunk()
        if delay:
            session.send = send
            sub.direct = session.write_now
        while True:
            if chunk is not None:
                sub.writing_since = started = time.monotonic()
                if delay and not done:
                    hub.cool(sub, started)
                metrics.stream_writes += 1
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sub.writing_since = 0.0
            if done:
                return
            chunk, done = await session.next_chunk()
            handoff = sub.handoff
            if handoff is not None:  # the rest of a write begun at a flush instant (`write_now`)
                sub.handoff = None
                await handoff
                sub.writing_since = 0.0
    finally:
        sub.direct = None
        handoff = sub.handoff
        if handoff is not None:
            sub.handoff = None
            handoff.close()
        sub.writing_since = 0.0
        sub.task = None
        if sub.aborted is not None:
            session.end_reason = sub.aborted
        session.stop()


class PumpedBody:
    """The Quart route's response body: it yields itself once, and the fast door, which
    wraps Quart's ``send`` for ``GET /stream``, runs `pump` on the server's own ``send``
    when that item comes by -- so both doors write a stream with the same loop."""

    __slots__ = ("session",)

    def __init__(self, session: StreamSession) -> None:
        self.session = session

    async def _once(self) -> AsyncIterator[PumpedBody]:
        yield self

    def __aiter__(self) -> AsyncIterator[PumpedBody]:
        return self._once()


def stream_headers_raw() -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in STREAM_HEADERS.items()]

