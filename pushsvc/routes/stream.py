"""GET /stream: open an SSE stream on one or more channels."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from quart import Blueprint, Response, request

from .. import sse
from ..asgi import REQUEST_ID_KEY, STREAM_LOGGED_KEY
from ..errors import ApiError
from ..events import DEFAULT_CHANNEL, EventError, check_channel
from ..resume import parse_stream_id
from ..runtime import runtime
from ..session import StreamSession, jittered

bp = Blueprint("stream", __name__)
access_log = logging.getLogger("pushsvc.access")

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


def _over_capacity(retry_ms: int) -> Response:
    body = b": over capacity, retry later\n" + sse.retry(jittered(max(retry_ms, 1000) * 2))
    return Response(body, 200, STREAM_HEADERS)


@bp.get("/stream")
async def stream() -> Response:
    rt = runtime()
    settings = rt.settings
    channels = requested_channels(request.args.getlist("channel"), settings.max_channels_per_stream)
    last_id = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
    resume = parse_stream_id(last_id, len(channels)) if last_id else None
    if rt.hub.draining or rt.hub.stream_count >= settings.max_streams:
        rt.metrics.streams_refused_capacity += 1
        return _over_capacity(settings.retry_ms)
    session = StreamSession(
        rt.hub, rt.metrics, channels, resume,
        unreadable_id=bool(last_id) and resume is None,
        retry_ms=settings.retry_ms,
        queue_size=settings.queue_size,
        queue_bytes=settings.queue_bytes,
    )
    rt.metrics.streams_opened += 1
    scope = cast(dict[str, Any], request.scope)
    scope[STREAM_LOGGED_KEY] = True  # this route logs its own access line
    response = Response(_logged(session, dict(scope)), 200, STREAM_HEADERS)
    response.timeout = None  # Quart would cut the stream after RESPONSE_TIMEOUT (60 s)
    return response


async def _logged(session: StreamSession, scope: dict[str, object]) -> AsyncIterator[bytes]:
    """The session's frames, then one access-log line when the stream ends (however)."""
    started = time.monotonic()
    try:
        async with contextlib.aclosing(cast(AsyncGenerator[bytes, None], session.frames())) as frames:
            async for chunk in frames:
                yield chunk
    finally:
        client = scope.get("client")
        access_log.info(
            "stream ended",
            extra={
                "request_id": scope.get(REQUEST_ID_KEY),
                "client": client[0] if isinstance(client, tuple) else "-",
                "channels": ",".join(session.channels),
                "duration_s": round(time.monotonic() - started, 3),
                "events": session.delivered,
                "reason": session.end_reason,
            },
        )
