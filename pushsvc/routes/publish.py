"""POST /publish: validate, authenticate and publish one event or a batch."""

from __future__ import annotations

import time
from typing import Any

from quart import Blueprint, request

from ..auth import authority
from ..broker import BrokerUnavailable
from ..errors import ApiError
from ..events import EventError, event_from_json, loads
from ..runtime import runtime

bp = Blueprint("publish", __name__)


def parse_body(raw: bytes, max_batch: int, max_event_bytes: int) -> tuple[list[Any], bool]:
    """(events, is_batch) from a publish body, or ApiError."""
    if not raw.strip():
        raise ApiError("invalid_json", "the body is empty; send a JSON event object or array")
    try:
        body = loads(raw)
    except (ValueError, RecursionError) as exc:
        detail = "the body is not valid JSON"
        if isinstance(exc, UnicodeDecodeError):
            detail = "the body is not valid UTF-8"
        raise ApiError("invalid_json", detail) from None
    batch = isinstance(body, list)
    items = body if batch else [body]
    if batch and not items:
        raise ApiError("invalid_event", "the batch is empty")
    if len(items) > max_batch:
        raise ApiError("batch_too_large", f"at most {max_batch} events per batch", 413)
    events = []
    for position, item in enumerate(items):
        try:
            events.append(event_from_json(item, max_event_bytes))
        except EventError as exc:
            where = f"event {position}: " if batch else ""
            status = 413 if exc.code == "event_too_large" else 400
            raise ApiError(exc.code, where + exc.detail, status) from None
    return events, batch


@bp.post("/publish")
async def publish() -> tuple[dict[str, Any], int]:
    rt = runtime()
    scope = authority().authenticate_publisher(request.headers.get("Authorization"))
    if request.mimetype != "application/json":
        raise ApiError(
            "unsupported_media_type", "send the body as Content-Type: application/json", 415
        )
    raw = await request.get_data(cache=False, as_text=False)
    assert isinstance(raw, bytes)
    events, batch = parse_body(raw, rt.settings.max_batch, rt.settings.max_event_bytes)
    scope.check([event.channels for event in events], batch)  # 403 before anything is published
    started = time.perf_counter()
    try:
        ids = await rt.broker.publish(events)
    except BrokerUnavailable as exc:
        rt.metrics.publish_failures += 1
        raise ApiError(
            "broker_unavailable", f"the event was not accepted: {exc}", 503,
            {"Retry-After": "1"},
        ) from None
    rt.metrics.publish_latency.observe(time.perf_counter() - started)
    rt.metrics.events_published += len(events)
    published = [
        {"channel": channel, "id": event_id}
        for event, event_ids in zip(events, ids, strict=True)
        for channel, event_id in zip(event.channels, event_ids, strict=True)
    ]
    result: dict[str, Any] = {"events": published}
    if not batch and len(published) == 1:
        result["id"] = published[0]["id"]
    return result, 202
