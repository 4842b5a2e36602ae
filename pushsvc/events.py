"""The `Event` value, its validation, and its wire format in Redis.

Wire format (one JSON object per pub/sub message and per history entry), compatible with
flask-sse: ``{"data": <any JSON>, "type": <str|null>, "retry": <int|null>}``.  Events that
pushsvc itself published carry one more member, appended by the publish script:
``"pushsvc": [<seq>, "<epoch>"]`` -- the channel's sequence number and history epoch.
A message without it (a plain ``PUBLISH`` by flask-sse or redis-cli) is delivered live
but has no id and no history.  A foreign ``"id"`` member is ignored on purpose: pushsvc
ids are resume positions, and an id the service did not assign would break resume.

Nothing here does I/O.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from . import sse

CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-.:@/]{1,200}")
EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9_\-.:@/]{1,100}")
EPOCH_RE = re.compile(r"[a-z0-9]{8}")
DEFAULT_CHANNEL = "sse"
RESERVED_PREFIX = "pushsvc:"  # pushsvc's own Redis channels (pushsvc:control)
MAX_RETRY_MS = 24 * 3600 * 1000
MAX_JSON_DEPTH = 64


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
    return value


def check_retry(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRY_MS:
        raise EventError("invalid_retry", f"retry must be an integer from 0 to {MAX_RETRY_MS} ms")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def loads(raw: bytes | str) -> Any:
    """Strict JSON: no NaN/Infinity (a browser's JSON.parse would choke on them)."""
    return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


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
class Event:
    """One event to publish on one or more channels."""

    channels: tuple[str, ...]
    data: Any
    type: str | None = None
    retry: int | None = None

    def message_prefix(self) -> bytes:
        """The wire JSON without its closing brace; the publish step appends the position."""
        return wire_prefix(self.data, self.type, self.retry)


def wire_prefix(data: Any, type_: str | None, retry: int | None) -> bytes:
    parts = ['{"data":', dumps(data)]
    if type_ is not None:
        parts += [',"type":', dumps(type_)]
    if retry is not None:
        parts += [',"retry":', str(retry)]
    return "".join(parts).encode("utf-8")


def seal(prefix: bytes, seq: int, epoch: str) -> bytes:
    """Close a wire prefix with its position: the same bytes the Lua publish script builds."""
    return prefix + b',"pushsvc":[%d,"%s"]}' % (seq, epoch.encode("ascii"))


def event_from_json(obj: object, max_event_bytes: int) -> Event:
    """Validate one published event object (the body of POST /publish or one batch item)."""
    if not isinstance(obj, dict):
        raise EventError("invalid_event", "each event must be a JSON object")
    unknown = set(obj) - {"channel", "data", "type", "retry"}
    if unknown:
        raise EventError("invalid_event", f"unknown field(s): {', '.join(sorted(unknown))}")
    if "data" not in obj:
        raise EventError("invalid_event", "field 'data' is required")
    raw_channels = obj.get("channel", DEFAULT_CHANNEL)
    if isinstance(raw_channels, list):
        if not raw_channels:
            raise EventError("invalid_channel", "channel list must not be empty")
        if len(raw_channels) > 100:
            raise EventError("invalid_channel", "at most 100 channels per event")
        channels = tuple(dict.fromkeys(check_channel(c) for c in raw_channels))
    else:
        channels = (check_channel(raw_channels),)
    if not _depth_ok(obj["data"], MAX_JSON_DEPTH):
        raise EventError("invalid_data", f"data is nested deeper than {MAX_JSON_DEPTH} levels")
    event = Event(channels, obj["data"], check_event_type(obj.get("type")), check_retry(obj.get("retry")))
    try:
        size = len(event.message_prefix())
    except UnicodeEncodeError:
        raise EventError("invalid_data", "data contains invalid unicode (lone surrogates)") from None
    except ValueError as exc:  # NaN/Infinity in data built by a caller of the Python API
        raise EventError("invalid_data", str(exc)) from None
    if size > max_event_bytes:
        raise EventError("event_too_large", f"event is {size} bytes, the limit is {max_event_bytes}")
    return event


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


def parse_message(channel: str, payload: bytes, trusted: bool = True) -> Frame:
    """Parse a pub/sub message or history entry into a Frame; EventError if it is not valid.

    Only `trusted` payloads (written by pushsvc's own publish script) may carry a position;
    an untrusted one is a foreign event without an id, whatever members it carries."""
    try:
        obj = loads(payload)
    except (ValueError, RecursionError):
        raise EventError("invalid_message", "message is not JSON") from None
    if not isinstance(obj, dict) or "data" not in obj:
        raise EventError("invalid_message", "message is not a JSON object with 'data'")
    type_ = check_event_type(obj.get("type"))
    retry = check_retry(obj.get("retry"))
    data = obj["data"]
    try:
        body = sse.encode_event(data if isinstance(data, str) else dumps(data), type_, retry)
    except (UnicodeEncodeError, ValueError):
        raise EventError("invalid_message", "message data cannot be encoded") from None
    position = obj.get("pushsvc") if trusted else None
    if position is None:
        return Frame(channel, None, 0, body, body)
    if (
        not isinstance(position, list)
        or len(position) != 2
        or isinstance(position[0], bool)
        or not isinstance(position[0], int)
        or position[0] < 1
        or not isinstance(position[1], str)
        or EPOCH_RE.fullmatch(position[1]) is None
    ):
        raise EventError("invalid_message", "message has a malformed pushsvc position")
    seq, epoch = position[0], position[1]
    id_line = b"id: %s-%d\n" % (epoch.encode("ascii"), seq)
    single = id_line + body
    return Frame(channel, epoch, seq, memoryview(single)[len(id_line):], single)
