"""The wire format, formatted and parsed here only: ids, positions, Redis keys and channel
names, and the Redis message envelope (also the Lua fragments that build them).

Ids.  Every channel has a dense sequence (1, 2, 3, ...) and an *epoch*, a random token that
changes whenever the channel's history is lost.  A channel's position is ``<epoch>-<seq>``
-- or ``0`` for "nothing of this channel yet".  A stream's id joins the positions of its
channels, sorted by channel name, with ``.``.  Clients treat ids as opaque.

Redis keys (one hash tag per channel, so a channel's keys share a cluster slot):

* ``pushsvc:{<channel>}:meta`` -- hash ``epoch``, ``seq``;
* ``pushsvc:{<channel>}:history`` -- capped stream, entry id ``0-<seq>``, field ``m``;
* ``pushsvc:{<channel>}:idem:<scope>:<key>`` -- an idempotency record (hash: ``f`` the
  request's fingerprint, ``<n>`` the ids given to event n), on the first channel of the
  request's first event;
* pub/sub ``pushsvc:{<channel>}:live`` -- where pushsvc's publish script publishes; only
  messages read there may carry a position (*trusted*).  The public name ``<channel>``
  takes raw ``PUBLISH``es (flask-sse, redis-cli): delivered live, never with an id.

Envelope (one JSON object per message and history entry, flask-sse compatible)::

    {"data": <any JSON>, "type": <str>, "retry": <int>, "pushsvc": [<seq>, "<epoch>"]}

``type``/``retry`` only when set; the ``"pushsvc"`` member is appended by the publish
script, with a third element ``"<eid>"`` (the event's identity, the same on every
channel's copy) when the event was published to more than one channel.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

EPOCH_RE = re.compile(r"[a-z0-9]{8}")
EID_RE = re.compile(r"[a-z0-9]{1,32}")
MAX_ID_LENGTH = 8192
_PART = re.compile(r"([a-z0-9]{8})-([0-9]{1,18})")

RESERVED_PREFIX = "pushsvc:"  # Redis names of pushsvc's own (keys, internal channels)
CONTROL_CHANNEL = "pushsvc:control"
ENVELOPE_MEMBER = "pushsvc"


# -- positions and stream ids ------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Position:
    epoch: str | None
    seq: int

    def format(self) -> str:
        return format_position(self.epoch, self.seq)


EMPTY = Position(None, 0)


def format_position(epoch: str | None, seq: int) -> str:
    return "0" if epoch is None else f"{epoch}-{seq}"


def format_stream_id(positions: list[Position]) -> str:
    return ".".join(p.format() for p in positions)


def parse_stream_id(text: str, channel_count: int) -> list[Position] | None:
    """Positions for each channel (sorted order), or None when the id cannot be read."""
    if not text or len(text) > MAX_ID_LENGTH:
        return None
    parts = text.split(".")
    if len(parts) != channel_count:
        return None
    positions = []
    for part in parts:
        if part == "0":
            positions.append(EMPTY)
            continue
        match = _PART.fullmatch(part)
        if match is None:
            return None
        positions.append(Position(match.group(1), int(match.group(2))))
    return positions


def id_line(epoch: str, seq: int) -> bytes:
    """The SSE ``id:`` line of a one-channel stream's frame."""
    return b"id: %s-%d\n" % (epoch.encode("ascii"), seq)


# -- Redis names -------------------------------------------------------------------------


def _head(channel: str) -> str:
    """What every Redis name of `channel` starts with (its hash tag: one cluster slot)."""
    return f"pushsvc:{{{channel}}}:"


def _tagged(channel: str, kind: str) -> str:
    return _head(channel) + kind


def history_key(channel: str) -> str:
    return _tagged(channel, "history")


def meta_key(channel: str) -> str:
    return _tagged(channel, "meta")


def live_channel(channel: str) -> str:
    """The internal pub/sub channel the publish script publishes `channel`'s events on."""
    return _tagged(channel, "live")


def channel_keys(channel: str) -> tuple[str, str, str]:
    """(`meta_key`, `history_key`, `live_channel`) of `channel`, built at once (a publish
    needs all three)."""
    head = _head(channel)
    return head + "meta", head + "history", head + "live"


def idempotency_key(channel: str, scope: str, key: str) -> str:
    return _tagged(channel, f"idem:{scope}:{key}")


_LIVE_HEAD, _LIVE_TAIL = "pushsvc:{", "}:live"


def channel_of_live(name: str) -> str | None:
    """The pushsvc channel whose internal live channel is `name`, else None (once per
    received message: slicing, no regex).  Channel names hold no braces."""
    if name.startswith(_LIVE_HEAD) and name.endswith(_LIVE_TAIL) and len(name) > 15:
        return name[9:-6]
    return None


# -- the envelope --------------------------------------------------------------------------


# One encoder (json.dumps with options builds a new one per call).
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def dumps(value: Any) -> str:
    return _ENCODE(value)


def message_prefix(data: Any, type_: str | None, retry: int | None) -> bytes:
    """The envelope without its closing brace; the publish step appends the position."""
    parts = ['{"data":', dumps(data)]
    if type_ is not None:
        parts += [',"type":', dumps(type_)]
    if retry is not None:
        parts += [',"retry":', str(retry)]
    return "".join(parts).encode("utf-8")


def seal(prefix: bytes, seq: int, epoch: str, eid: str | None = None) -> bytes:
    """Close a prefix with its position: the same bytes the Lua publish script builds."""
    tail = b',"%s":[%d,"%s"' % (ENVELOPE_MEMBER.encode(), seq, epoch.encode("ascii"))
    if eid:
        tail += b',"%s"' % eid.encode("ascii")
    return prefix + tail + b"]}"


def lua_seal(prefix: str, seq: str, epoch: str, eid: str) -> str:
    """A Lua expression building `seal(...)` from Lua variables (eid '' means none)."""
    return (
        f"{prefix} .. ',\"{ENVELOPE_MEMBER}\":[' .. {seq} .. ',\"' .. {epoch} .. '\"'"
        f" .. ({eid} ~= '' and (',\"' .. {eid} .. '\"') or '') .. ']}}'"
    )


def lua_position(seq: str, epoch: str) -> str:
    """A Lua expression formatting a position like `format_position`."""
    return f"{epoch} .. '-' .. {seq}"


class EnvelopeError(ValueError):
    pass


#: Epochs `read_position` has seen well-formed (a few per channel: the regex once each).
_EPOCHS_SEEN: set[str] = set()


def read_position(member: object) -> tuple[int, str, str | None]:
    """(seq, epoch, eid) from a trusted envelope's ``"pushsvc"`` member; EnvelopeError."""
    if type(member) is not list or len(member) not in (2, 3):
        raise EnvelopeError("message has a malformed pushsvc position")
    seq, epoch = member[0], member[1]
    if type(seq) is not int or seq < 1 or type(epoch) is not str:  # type(): bool is no int here
        raise EnvelopeError("message has a malformed pushsvc position")
    if epoch not in _EPOCHS_SEEN:
        if EPOCH_RE.fullmatch(epoch) is None:
            raise EnvelopeError("message has a malformed pushsvc position")
        if len(_EPOCHS_SEEN) >= 4096:
            _EPOCHS_SEEN.clear()
        _EPOCHS_SEEN.add(epoch)
    eid = None
    if len(member) == 3:
        eid = member[2]
        if type(eid) is not str or EID_RE.fullmatch(eid) is None:
            raise EnvelopeError("message has a malformed pushsvc event identity")
    return seq, epoch, eid


def position_ids(text: str | bytes) -> list[str]:
    """The ids a publish script call returns (space-separated positions)."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    return text.split(" ")


def history_entry_seq(entry_id: bytes | str) -> int:
    """The sequence of a history stream entry (its id is ``0-<seq>``)."""
    text = entry_id.decode("ascii") if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[1])
