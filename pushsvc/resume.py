"""Stream ids: the resume position a browser holds (`Last-Event-ID`).

Every channel has a dense sequence (1, 2, 3, ...) and an *epoch*, a random token that
changes whenever the channel's history is lost (Redis restarted, keys expired).  A
channel's position is ``<epoch>-<seq>`` -- or ``0`` for "nothing of this channel yet, and
it had no history then".  A stream's id joins the positions of its channels, sorted by
channel name, with ``.``: ``k3j9x2ab-42`` for one channel, ``k3j9x2ab-42.0.m1n2b3v4-7``
for three.  Clients must treat ids as opaque; the format may change between versions
(an unreadable id just yields a ``pushsvc.reset`` event).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ID_LENGTH = 8192
_PART = re.compile(r"([a-z0-9]{8})-([0-9]{1,18})")


@dataclass(slots=True, frozen=True)
class Position:
    epoch: str | None
    seq: int

    def format(self) -> str:
        return "0" if self.epoch is None else f"{self.epoch}-{self.seq}"


EMPTY = Position(None, 0)


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
