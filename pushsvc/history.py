"""History on demand, framework-free: `GET /history`'s page of a channel's retained events,
and the resume id that makes ``/stream?rewind=N`` replay the last N events.

Both read only `Broker.position` / `Broker.history` and speak in stream ids
(`pushsvc.resume`), so the stream cursor needs no change: a rewound stream is opened as if
the browser had sent the id of the event N back, and the ordinary catch-up replays from
there (bounded like every replay).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .appauth import ServeLater
from .broker import Broker, BrokerUnavailable
from .errors import ApiError
from .resume import EMPTY, Position, format_stream_id, parse_stream_id

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_REWIND = 1_000_000  # replays are bounded by the history size anyway


async def rewind_position(broker: Broker, channel: str, count: int) -> Position:
    """The position `count` events back on `channel`, never before its first retained
    entry minus one (so the replay is complete, never a ``too_old`` reset)."""
    current = await broker.position(channel)
    if current.epoch is None or count <= 0:
        return current
    retained = await broker.history(channel, max(0, current.seq - count), limit=1)  # only its bounds
    if retained.epoch != current.epoch or retained.first_seq is None:
        return Position(retained.epoch, retained.last_seq) if retained.epoch else EMPTY
    return Position(current.epoch, max(current.seq - count, retained.first_seq - 1))


async def rewind_id(broker: Broker, channels: tuple[str, ...], count: int) -> str:
    """The stream id (channels in sorted order, as `channels` is) to open a stream with so
    that it first replays the last `count` events of each channel; ServeLater when the
    broker cannot say now."""
    try:
        return format_stream_id([await rewind_position(broker, channel, count) for channel in channels])
    except BrokerUnavailable as exc:
        raise ServeLater(f"history is not available: {exc}") from None


def channel_position(after: str, epoch: str | None) -> Position | None:
    """The position of the channel whose current epoch is `epoch` in `after`: the channel's
    own id or any stream id containing it.  None when `after` cannot be read.  Ids are
    opaque and do not name their channels, so the part is found by its epoch (random per
    channel); failing that a ``0`` part (the channel had no history then), failing that the
    first part (an earlier epoch: its history is lost either way)."""
    positions = parse_stream_id(after, after.count(".") + 1)
    if positions is None:
        return None
    for position in positions:
        if epoch is not None and position.epoch == epoch:
            return position
    if EMPTY in positions:
        return EMPTY
    return positions[0]


@dataclass(slots=True)
class Page:
    events: list[dict[str, Any]]
    last_id: str
    reset: str | None

    def body(self) -> dict[str, Any]:
        return {"events": self.events, "last_id": self.last_id, "reset": self.reset}


async def read_page(broker: Broker, channel: str, after: str | None, limit: int) -> Page:
    """Events of `channel` after `after` -- all retained ones without it or on a reset --
    at most `limit`, oldest first, decided as the stream cursor decides a resume;
    `last_id` is where a stream opened with it continues (the last event given, else the
    position it started from)."""
    current = await broker.position(channel)  # its epoch finds the channel's part of `after`
    wanted = None if after is None else channel_position(after, current.epoch)
    reset = "unreadable_id" if after is not None and wanted is None else None
    after_seq = wanted.seq if wanted is not None and wanted.epoch is not None and wanted.epoch == current.epoch else 0
    retained = await broker.history(channel, after_seq, limit=max(limit, 1))  # the page (sliced below)
    if wanted is not None:
        if wanted.epoch is None:
            complete = retained.epoch is None or retained.first_seq == 1
        elif wanted.epoch != retained.epoch:
            reset, complete = "history_lost", False
        else:
            first = retained.first_seq
            complete = wanted.seq >= retained.last_seq or (first is not None and first <= wanted.seq + 1)
        if not complete and reset is None:
            reset = "too_old"
        if reset is not None and after_seq > 0:  # a reset starts at the oldest retained event
            retained = await broker.history(channel, 0, limit=max(limit, 1))
    if retained.epoch is None:
        return Page([], "0", reset)
    if wanted is not None and reset is None:
        begin = min(wanted.seq, retained.last_seq)
    else:
        begin = retained.first_seq - 1 if retained.first_seq is not None else retained.last_seq
    events: list[dict[str, Any]] = []
    last = begin
    for seq, payload in [entry for entry in retained.entries if entry[0] > begin][:limit]:
        last = seq
        event = _event(payload)
        if event is not None:  # an unreadable entry is skipped, as a stream skips it
            events.append({"id": Position(retained.epoch, seq).format(), **event})
    return Page(events, Position(retained.epoch, last).format(), reset)


def _event(payload: bytes) -> dict[str, Any] | None:
    """type and data of a stored message (flask-sse JSON); None if it is not readable."""
    try:
        message = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(message, dict) or "data" not in message:
        return None
    event_type = message.get("type")
    return {"type": event_type if isinstance(event_type, str) else "message", "data": message["data"]}


def parse_count(name: str, text: str | None, default: int, high: int) -> int:
    """A query parameter holding a count from 0 to `high` (`default` when absent)."""
    if text is None or text == "":
        return default
    if not text.isdigit() or int(text) > high:  # isdigit: no sign, no spaces, no decimals
        raise ApiError(f"invalid_{name}", f"{name} must be an integer from 0 to {high}")
    return int(text)
