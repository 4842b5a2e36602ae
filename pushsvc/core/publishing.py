"""Accepting a publish without a web framework: `publish_request` is the whole answer to
``POST /publish`` (parse, validate, authenticate, store), used by both doors."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..broker import BrokerUnavailable
from ..events import EventError, event_from_json, loads
from .errors import ApiError

if TYPE_CHECKING:  # both reach Quart's current_app for the routes' accessors
    from ..auth import Authority
    from ..runtime import Runtime


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


BodyReader = Callable[[], Awaitable[bytes]]


def media_type(content_type: str | None) -> str:
    """What werkzeug's `request.mimetype` is: the type without parameters, lowercased."""
    return (content_type or "").split(";", 1)[0].strip().lower()


async def publish_request(
    rt: Runtime, auth: Authority, authorization: str | None, content_type: str | None,
    read_body: BodyReader,
) -> tuple[dict[str, Any], int]:
    """The whole of ``POST /publish`` without a web framework: (JSON body, status), or
    ApiError.  The Quart route below and the pure-ASGI path (`pushsvc.fastpath`) both
    answer with this.  `read_body` is awaited only once the caller is authenticated and
    the media type is right, as before: those answers never wait for the body."""
    scope = auth.authenticate_publisher(authorization)
    if media_type(content_type) != "application/json":
        raise ApiError(
            "unsupported_media_type", "send the body as Content-Type: application/json", 415
        )
    raw = await read_body()
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
