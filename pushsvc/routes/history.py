"""GET /history?channel=<name>&after=<id>&limit=N: a channel's retained events as JSON.

Authorised exactly like subscribing to the channel (public: open; private: a JWT or the
app's callback) and CORS'd like ``/stream``; the page itself is `pushsvc.history.read_page`.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from ..appauth import authorize_subscriber
from ..broker import BrokerUnavailable
from ..errors import ApiError
from ..events import EventError, check_channel
from ..history import DEFAULT_LIMIT, MAX_LIMIT, parse_count, read_page
from ..runtime import runtime

bp = Blueprint("history", __name__)


@bp.get("/history")
async def history() -> dict[str, Any]:
    rt = runtime()
    name = request.args.get("channel")
    if name is None:
        raise ApiError("invalid_channel", "the query parameter 'channel' is required")
    try:
        channel = check_channel(name)
    except EventError as exc:
        raise ApiError(exc.code, exc.detail) from None
    limit = parse_count("limit", request.args.get("limit"), DEFAULT_LIMIT, MAX_LIMIT)
    after = request.args.get("after") or None
    await authorize_subscriber((channel,), after)
    try:
        page = await read_page(rt.broker, channel, after, limit)
    except BrokerUnavailable as exc:
        raise ApiError("broker_unavailable", f"history is not available: {exc}", 503,
                       {"Retry-After": "1"}) from None
    return page.body()
