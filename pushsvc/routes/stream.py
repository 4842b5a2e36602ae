"""GET /stream, the Quart door: streams the fast door (`pushsvc.fastpath`) hands over --
private channels (their tokens, or the app's callback, need the request's cookies and
headers), `rewind`, and every request when CORS is configured.  Opening and pumping the
stream are `pushsvc.core.streams`, the same code the fast door runs.
"""

from __future__ import annotations

from typing import Any, cast

from quart import Blueprint, Response, request

from ..appauth import authorize_subscriber
from ..asgi import STREAM_KEY
from ..core.streams import STREAM_HEADERS, PumpedBody, new_session, requested_channels, stream_request
from ..history import MAX_REWIND, parse_count, rewind_id
from ..runtime import runtime

bp = Blueprint("stream", __name__)


@bp.get("/stream")
async def stream() -> Response:
    rt = runtime()
    scope = request.scope
    channel_values, last_id = stream_request(scope["query_string"], scope["headers"])
    channels = requested_channels(channel_values, rt.settings.max_channels_per_stream)
    # 401/403 before anything is subscribed: no stream opens for a refused request.
    expires_at = await authorize_subscriber(channels, last_id)  # a JWT, or the app (pushsvc.appauth)
    if not last_id and (rewind := parse_count("rewind", request.args.get("rewind"), 0, MAX_REWIND)):
        last_id = await rewind_id(rt.broker, channels, rewind)  # the usual catch-up replays from there
    session = new_session(rt, channels, last_id, expires_at)
    if isinstance(session, bytes):
        return Response(session, 200, STREAM_HEADERS)
    # The access log (pushsvc.asgi) reads the session's events sent and end reason at the end.
    cast(dict[str, Any], scope)[STREAM_KEY] = session
    # The fast door in front of Quart runs the one stream pump for this body (PumpedBody).
    response = Response(PumpedBody(session), 200, STREAM_HEADERS)
    response.timeout = None  # Quart would cut the stream after RESPONSE_TIMEOUT (60 s)
    return response
