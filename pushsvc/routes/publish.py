"""POST /publish: the Quart route, a thin caller of `pushsvc.core.publishing.publish_request`
(as is the pure-ASGI fast door in `pushsvc.fastpath` for plain requests)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request

from ..auth import authority
from ..core.publishing import publish_request
from ..runtime import runtime

bp = Blueprint("publish", __name__)


async def _request_body() -> bytes:
    raw = await request.get_data(cache=False, as_text=False)
    assert isinstance(raw, bytes)
    return raw


@bp.post("/publish")
async def publish() -> tuple[dict[str, Any], int, dict[str, str]]:
    return await publish_request(
        runtime(), authority(), request.headers.get("Authorization"),
        request.headers.get("Content-Type"), _request_body,
        request.headers.get("Idempotency-Key"),
    )
