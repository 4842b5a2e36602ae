"""GET /channels/<name>: how many streams listen to a channel, across every process."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from ..auth import authority
from ..broker import BrokerUnavailable
from ..errors import ApiError
from ..events import EventError, check_channel
from ..runtime import runtime

bp = Blueprint("channels", __name__)


@bp.get("/channels/<path:name>")
async def channel_info(name: str) -> dict[str, Any]:
    rt = runtime()
    scope = authority().authenticate_publisher(request.headers.get("Authorization"))
    try:
        channel = check_channel(name)
    except EventError as exc:
        raise ApiError(exc.code, exc.detail) from None
    scope.check([(channel,)], batch=False)  # a scoped publisher sees only its own channels
    try:
        count = await rt.broker.count_subscribers(channel, rt.hub.local_subscribers(channel))
    except BrokerUnavailable as exc:
        raise ApiError("broker_unavailable", f"the count is not available: {exc}", 503,
                       {"Retry-After": "1"}) from None
    return {"channel": channel, "subscribers": count}
