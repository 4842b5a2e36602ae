"""The `Event` value and its validation (one function for every door: `POST /publish`,
`pushsvc.publisher`, `pushsvc publish`), and the parsing of received messages into frames.

The wire format itself (envelope, positions, names) is `pushsvc.wire`'s.  A message read
from a channel's public pub/sub name (a plain ``PUBLISH`` by flask-sse or redis-cli) is
*untrusted*: delivered live without an id, whatever members it carries.  A foreign
``"id"`` member is always ignored: pushsvc ids are resume positions.

Nothing here does I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import sse, wire
from .wire import RESERVED_PREFIX, dumps, seal
from .wire import message_prefix as wire_prefix

__all__ = ["dumps", "seal", "wire_prefix"]  # re-exported for older importers

CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-.:@/]{1,200}")
EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9_\-.:@/]{1,100}")
IDEMPOTENCY_KEY_RE = re.compile(r"[A-Za-z0-9_\-.:@/+=]{1,200}")
DEFAULT_CHANNEL = "sse"
RESERVED_TYPE_PREFIX = "pushsvc."  # pushsvc.reset, pushsvc.token_expired ...
DEFAULT_MAX_RETRY_MS = 60_000
MAX_RETRY_MS = 3_600_000  # what a received message may carry (PUSHSVC_RETRY_MS's bound)
MAX_JSON_DEPTH = 64
MAX_CHANNELS_PER_EVENT = 100


class EventError(ValueError):
    """An event or channel that cannot be accepted; `code` is the API error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def check_channel(name: object) -> str:
    if not isinstance(name, str):
        raise EventError("invalid_channel", "channel must be a string")
    if CHANNEL_RE.fullmatch(name) is None:
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise EventError(
            "invalid_channel",
            f"invalid channel name {shown!r}: use 1 to 200 letters, digits or _ - . : @ /",
        )
    if name.startswith(RESERVED_PREFIX):
        raise EventError("invalid_channel", f"channel names starting with {RESERVED_PREFIX!r} are reserved")
    return name


def check_event_type(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or EVENT_TYPE_RE.fullmatch(value) is None:
        raise EventError(
            "invalid_type",
            "event type must be 1 to 100 letters, digits or _ - . : @ / (no spaces, CR or LF)",
        )
    if value.startswith(RESERVED_TYPE_PREFIX):
        raise EventError("invalid_type", f"event types starting with {RESERVED_TYPE_PREFIX!r} are reserved")
    return value


def check_retry(value: object, limit: int = MAX_RETRY_MS) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise EventError("invalid_retry", f"retry must be an integer from 0 to {limit} ms")
    return value


def check_idempotency_key(value: object) -> str:
    if not isinstance(value, str) or IDEMPOTENCY_KEY_RE.fullmatch(value) is None:
        raise EventError(
            "invalid_idempotency_key",
            "an idempotency key is 1 to 200 letters, digits or _ - . : @ / + =",
        )
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


# One decoder for every body (json.loads with options builds a new one per call).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def loads(raw: bytes | str) -> Any:
    """Strict JSON: UTF-8 only (json.loads would take UTF-16/32 bytes), no NaN/Infinity
    (a browser's JSON.parse would choke on them)."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    elif not isinstance(raw, str):  # bytearray, memoryview
        raw = bytes(raw).decode("utf-8")
    if raw.startswith("\ufeff"):  # as json.loads
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", raw, 0)
    return _DECODER.decode(raw)


def _depth_ok(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in item)
    return True


@dataclass(frozen=True, slots=True)
class Limits:
    """What a publisher may send (the settings' values; the defaults are theirs)."""

    max_event_bytes: int = 64 * 1024
    max_retry_ms: int = DEFAULT_MAX_RETRY_MS
    max_channels: int = MAX_CHANNELS_PER_EVENT


@dataclass(frozen=True, slots=True)
class Event:
    """One event to publish on one or more channels."""

    channels: tuple[str, ...]
    data: Any
    type: str | None = None
    retry: int | None = None
    idempotency_key: str | None = None  # the per-event key (`idempotency_key` field)
    #: `message_prefix()` as `event_from_json` computed it (None: computed on demand).
    #: Give it only with these very fields (``dataclasses.replace`` would keep it).
    wire_prefix: bytes | None = field(default=None, compare=False, repr=False)

    def message_prefix(self) -> bytes:
        """The wire JSON without its closing brace; the publish step appends the position."""
        if self.wire_prefix is not None:
            return self.wire_prefix
        return wire.message_prefix(self.data, self.type, self.retry)


EVENT_FIELDS = frozenset({"channel", "data", "type", "retry", "idempotency_key"})


def event_from_json(obj: object, limits: Limits | int) -> Event:
    """Validate one published event object (the body of POST /publish, one batch item, or
    what `pushsvc.publisher` was given): the one validation every door applies."""
    if isinstance(limits, int):
        limits = Limits(max_event_bytes=limits)
    if not isinstance(obj, dict):
        raise EventError("invalid_event", "each event must be a JSON object")
    unknown = () if EVENT_FIELDS.issuperset(obj) else set(obj) - EVENT_FIELDS
    if unknown:
        raise EventError("invalid_event", f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    if "data" not in obj:
        raise EventError("invalid_event", "field 'data' is required")
    raw_channels = obj.get("channel", DEFAULT_CHANNEL)
    if isinstance(raw_channels, list | tuple):
        if not raw_channels:
            raise EventError("invalid_channel", "channel list must not be empty")
        if len(raw_channels) > limits.max_channels:
            raise EventError("invalid_channel", f"at most {limits.max_channels} channels per event")
        channels = tuple(dict.fromkeys(check_channel(c) for c in raw_channels))
    else:
        channels = (check_channel(raw_channels),)
    if isinstance(obj["data"], dict | list) and not _depth_ok(obj["data"], MAX_JSON_DEPTH):
        raise EventError("invalid_data", f"data is nested deeper than {MAX_JSON_DEPTH} levels")
    key = obj.get("idempotency_key")
    data, type_ = obj["data"], check_event_type(obj.get("type"))
    retry = check_retry(obj.get("retry"), limits.max_retry_ms)
    if key is not None:
        key = check_idempotency_key(key)
    try:
        prefix = wire.message_prefix(data, type_, retry)
    except UnicodeEncodeError:
        raise EventError("invalid_data", "data contains invalid unicode (lone surrogates)") from None
    except RecursionError:
        raise EventError("invalid_data", f"data is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, TypeError) as exc:  # NaN, sets, objects... from a Python API caller
        raise EventError("invalid_data", f"data is not JSON: {exc}") from None
    if len(prefix) > limits.max_event_bytes:
        raise EventError(
            "event_too_large", f"event is {len(prefix)} bytes, the limit is {limits.max_event_bytes}"
        )
    return Event(channels, data, type_, retry, key, prefix)


@dataclass(slots=True)
class Frame:
    """One received event, parsed and SSE-encoded once for every local subscriber.

    `single` is what a one-channel stream sends (id line + event); `body` is the event
    without its id line, a view into `single` (one copy of the bytes per event).  Foreign
    events (no pushsvc position) have seq 0 and no id line.
    """

    channel: str
    epoch: str | None
    seq: int
    body: bytes | memoryview
    single: bytes
    eid: str | None = None  # the event's identity, shared by its copies on several channels


_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def parse_message(channel: str, payload: bytes, trusted: bool = True) -> Frame:
    """Parse a pub/sub message or history entry into a Frame; EventError if it is not valid.

    Only `trusted` payloads (written by pushsvc's own publish script) may carry a position;
    an untrusted one is a foreign event without an id, whatever members it carries."""
    try:
        # `loads`, for a payload that is one JSON value and nothing else (what the publish
        # script writes): the decoder's scanner at once, else `loads` itself decides.
        text = payload.decode("utf-8")
        obj, end = _SCAN(text, 0)
        if end != len(text):
            obj = loads(payload)
    except (ValueError, RecursionError, StopIteration, AttributeError):
        try:
            obj = loads(payload)
        except (ValueError, RecursionError):
            raise EventError("invalid_message", "message is not JSON") from None
    if type(obj) is not dict or "data" not in obj:
        raise EventError("invalid_message", "message is not a JSON object with 'data'")
    type_ = obj.get("type")
    if type_ is not None:
        type_ = check_event_type(type_)
    retry = obj.get("retry")
    if retry is not None:
        retry = check_retry(retry)
    data = obj["data"]
    try:
        body = sse.encode_event(data if type(data) is str else dumps(data), type_, retry)
    except (UnicodeEncodeError, ValueError):
        raise EventError("invalid_message", "message data cannot be encoded") from None
    member = obj.get(wire.ENVELOPE_MEMBER) if trusted else None
    if member is None:
        return Frame(channel, None, 0, body, body)
    try:
        seq, epoch, eid = wire.read_position(member)
    except wire.EnvelopeError as exc:
        raise EventError("invalid_message", str(exc)) from None
    line = wire.id_line(epoch, seq)
    single = line + body
    return Frame(channel, epoch, seq, memoryview(single)[len(line):], single, eid)
