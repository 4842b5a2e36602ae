"""Accepting a publish without a web framework: `publish_request` is the whole answer to
``POST /publish`` (parse, validate, authenticate, store), used by both doors.

Idempotency: an ``Idempotency-Key`` header covers the whole request, an ``idempotency_key``
field one event (not both: 400).  A key's scope is the publishing credential (a hash of a
static token; a JWT's ``sub``, else a hash of the JWT; ``a`` when anonymous; see
`Authority.publisher_identity`).  A repeat within ``PUSHSVC_IDEMPOTENCY_SECONDS`` answers 202
with the original ids and ``Idempotent-Replayed: true``; the key used for another request
is 422 ``idempotency_key_reused``.  503 ``broker_unavailable`` means nothing was stored;
503 ``outcome_unknown`` that the answer was lost after the request reached Redis (retry
with the same key: safe).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..broker import BrokerUnavailable, Idempotency, IdempotencyConflict, OutcomeUnknown
from ..broker.scripts import copies, max_copies
from ..events import Event, EventError, Limits, check_idempotency_key, event_from_json, loads
from .errors import ApiError

if TYPE_CHECKING:  # both reach Quart's current_app for the routes' accessors
    from ..auth import Authority
    from ..runtime import Runtime


def parse_body(
    raw: bytes, max_batch: int, limits: Limits | int, copies_limit: int | None = None
) -> tuple[list[Event], bool]:
    """(events, is_batch) from a publish body, or ApiError.  `copies_limit`: most events x
    channels (a larger request is refused before anything is stored)."""
    if not raw or raw.isspace():  # (as `not raw.strip()`, without copying the body)
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
            events.append(event_from_json(item, limits))
        except EventError as exc:
            where = f"event {position}: " if batch else ""
            status = 413 if exc.code == "event_too_large" else 400
            raise ApiError(exc.code, where + exc.detail, status) from None
    total = copies(events)
    if copies_limit is not None and total > copies_limit:
        raise ApiError(
            "batch_too_large",
            f"the request has {total} event copies (events x channels); at most "
            f"{copies_limit} per request (2,500 per second of PUSHSVC_REDIS_TIMEOUT_SECONDS), so "
            "that it is stored within the Redis timeout; nothing was stored",
            413,
        )
    return events, batch


def idempotency_of(
    header: str | None, events: list[Event], auth: Authority, authorization: str | None,
    window_seconds: int,
) -> Idempotency | None:
    """The request's idempotency (header or per-event fields), or ApiError 400."""
    per_event = [e.idempotency_key for e in events if e.idempotency_key is not None]
    if header is None and not per_event:
        return None
    if header is not None and per_event:
        raise ApiError(
            "invalid_idempotency_key",
            "use the Idempotency-Key header (the whole request) or idempotency_key fields "
            "(one event each), not both",
        )
    if len(set(per_event)) != len(per_event):
        raise ApiError("invalid_idempotency_key", "an idempotency_key appears twice in the batch")
    key = None
    if header is not None:
        value = header.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':  # the draft's sf-string form
            value = value[1:-1]
        try:
            key = check_idempotency_key(value)
        except EventError as exc:
            raise ApiError(exc.code, "Idempotency-Key: " + exc.detail) from None
    return Idempotency(auth.publisher_identity(authorization), key, window_seconds)


#: The request body: its bytes when they are already there, else an awaitable of them.
BodyReader = Callable[[], bytes | Awaitable[bytes]]


@functools.lru_cache(maxsize=8)
def _limits(max_event_bytes: int, max_retry_ms: int) -> Limits:
    return Limits(max_event_bytes, max_retry_ms)


def media_type(content_type: str | None) -> str:
    """What werkzeug's `request.mimetype` is: the type without parameters, lowercased."""
    return (content_type or "").split(";", 1)[0].strip().lower()


async def publish_request(
    rt: Runtime, auth: Authority, authorization: str | None, content_type: str | None,
    read_body: BodyReader, idempotency_key: str | None = None,
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The whole of ``POST /publish`` without a web framework: (JSON body, status, extra
    headers), or ApiError.  Both doors (the Quart route and the pure-ASGI fast door) answer
    with this.  `read_body` is awaited only once the caller is authenticated and the media
    type is right: those answers never wait for the body (it returns the bytes themselves when
    they are already there).  `idempotency_key` is the ``Idempotency-Key`` header."""
    scope = auth.authenticate_publisher(authorization)
    if media_type(content_type) != "application/json":
        raise ApiError(
            "unsupported_media_type", "send the body as Content-Type: application/json", 415
        )
    raw = read_body()
    if not isinstance(raw, bytes):
        raw = await raw
    settings = rt.settings
    limits = _limits(settings.max_event_bytes, settings.max_retry_ms)
    events, batch = parse_body(raw, settings.max_batch, limits, max_copies(settings.redis_timeout_seconds))
    if scope.patterns is not None:  # 403 before anything is published
        scope.check([event.channels for event in events], batch)
    idem = idempotency_of(idempotency_key, events, auth, authorization, settings.idempotency_seconds)
    started = time.perf_counter()
    try:
        published = await rt.broker.publish(events, idem)
    except IdempotencyConflict:
        raise ApiError(
            "idempotency_key_reused",
            "this idempotency key was used for a different request (within "
            f"{settings.idempotency_seconds} s); nothing was stored",
            422,
        ) from None
    except OutcomeUnknown as exc:
        rt.metrics.publish_failures += 1
        raise ApiError(
            "outcome_unknown",
            f"the request reached Redis but its answer was lost ({exc}): the events may or may "
            "not be stored; a retry with the same Idempotency-Key is safe (it stores nothing twice)",
            503, {"Retry-After": "1"},
        ) from None
    except BrokerUnavailable as exc:
        rt.metrics.publish_failures += 1
        raise ApiError(
            "broker_unavailable", f"the event was not stored: {exc}", 503,
            {"Retry-After": "1"},
        ) from None
    rt.metrics.publish_latency.observe(time.perf_counter() - started)
    headers: dict[str, str] = {}
    if published.replayed:
        headers["Idempotent-Replayed"] = "true"
    else:
        rt.metrics.events_published += len(events)
    if not batch and len(events[0].channels) == 1:  # most publishes: one event, one channel
        (event_id,), = published.ids
        return {"events": [{"channel": events[0].channels[0], "id": event_id}], "id": event_id}, 202, headers
    answer = [
        {"channel": channel, "id": event_id}
        for event, event_ids in zip(events, published.ids, strict=True)
        for channel, event_id in zip(event.channels, event_ids, strict=True)
    ]
    result: dict[str, Any] = {"events": answer}
    if not batch and len(answer) == 1:
        result["id"] = answer[0]["id"]
    return result, 202, headers


def answer_bytes(result: dict[str, Any]) -> bytes:
    """`json_bytes` of `publish_request`'s answer, formatted directly: its keys are known and
    sorted, channel names (`CHANNEL_RE`) and ids are ASCII that JSON needs not escape."""
    events = b",".join([
        b'{"channel":"%s","id":"%s"}' % (item["channel"].encode("ascii"), item["id"].encode("ascii"))
        for item in result["events"]
    ])
    if "id" in result:
        return b'{"events":[%s],"id":"%s"}\n' % (events, result["id"].encode("ascii"))
    return b'{"events":[%s]}\n' % events
