"""Server-Sent Events wire encoding: pure functions from event fields to bytes.

Follows the WHATWG "server-sent events" parsing rules: a field value cannot contain CR or
LF, so multi-line data becomes several ``data:`` lines (CR and CRLF arrive as LF), and
``id``/``event`` values are checked by the caller (`events.check_event_type`) so that they
can never inject a field.
"""

from __future__ import annotations

import re

_NEWLINE = re.compile(r"\r\n|\r|\n")


def encode_event(data: str, event_type: str | None = None, retry: int | None = None) -> bytes:
    """Encode an event without its id line (the id depends on the stream, see `Frame`)."""
    if event_type is None and retry is None and "\n" not in data and "\r" not in data:
        return f"data: {data}\n\n".encode()  # one line: what most events are
    lines = []
    if event_type is not None:
        lines.append(f"event: {event_type}\n")
    if retry is not None:
        lines.append(f"retry: {int(retry)}\n")
    for line in _NEWLINE.split(data):
        lines.append(f"data: {line}\n")
    lines.append("\n")
    return "".join(lines).encode("utf-8")


def id_line(event_id: str) -> bytes:
    if "\n" in event_id or "\r" in event_id or "\0" in event_id:
        raise ValueError("an SSE id cannot contain CR, LF or NUL")
    return b"id: " + event_id.encode("utf-8") + b"\n"


def id_only(event_id: str) -> bytes:
    """Sets the browser's last event id without dispatching an event (empty data buffer)."""
    return id_line(event_id) + b"\n"


def comment(text: str) -> bytes:
    return b": " + _NEWLINE.sub(" ", text).encode("utf-8") + b"\n\n"


def retry(ms: int) -> bytes:
    return b"retry: %d\n\n" % int(ms)


PING = comment("ping")
