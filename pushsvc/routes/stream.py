"""GET /stream: open an SSE stream on one or more channels.

`new_session` (resume position, capacity, the session) is shared with the pure-ASGI path
in `pushsvc/fastpath.py`, which `pushsvc serve` puts in front of this route for public
channels; anything else (private channels, CORS, errors) is answered here.
"""

from __future__ import annotations

from typing import Any, cast

from quart import Blueprint, Response, request

from .. import sse
from ..appauth import authorize_subscriber
from ..asgi import STREAM_KEY
from ..errors import ApiError
from ..events import DEFAULT_CHANNEL, EventError, check_channel
from ..history import MAX_REWIND, parse_count, rewind_id
from ..resume import parse_stream_id
from ..runtime import Runtime, runtime
from ..session import StreamSession, jittered

bp = Blueprint("stream", __name__)

STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


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


@bp.get("/stream")
async def stream() -> Response:
    rt = runtime()
    settings = rt.settings
    channels = requested_channels(request.args.getlist("channel"), settings.max_channels_per_stream)
    last_id = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
    # 401/403 before anything is subscribed: no stream opens for a refused request.
    expires_at = await authorize_subscriber(channels, last_id)  # a JWT, or the app (pushsvc.appauth)
    if not last_id and (rewind := parse_count("rewind", request.args.get("rewind"), 0, MAX_REWIND)):
        last_id = await rewind_id(rt.broker, channels, rewind)  # the usual catch-up replays from there
    session = new_session(rt, channels, last_id, expires_at)
    if isinstance(session, bytes):
        return Response(session, 200, STREAM_HEADERS)
    # The access log (pushsvc.asgi) reads the session's events sent and end reason at the end.
    cast(dict[str, Any], request.scope)[STREAM_KEY] = session
    response = Response(session.frames(), 200, STREAM_HEADERS)
    response.timeout = None  # Quart would cut the stream after RESPONSE_TIMEOUT (60 s)
    return response

