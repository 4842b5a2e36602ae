"""An incremental parser written to the WHATWG "server-sent events" parsing rules.

Used by the tests as the browser would be: it decides what `event.data`, `event.type` and
`event.lastEventId` a page sees.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

_TERMINATOR = re.compile(r"\r\n|\r|\n")


@dataclass
class Event:
    type: str
    data: str
    last_event_id: str


@dataclass
class Parser:
    last_event_id: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )
    _pending: str = ""
    _started: bool = False
    _data: str = ""
    _type: str = ""
    _id: str = ""

    def feed(self, chunk: bytes) -> list[Event]:
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        pending = self._pending + text
        events: list[Event] = []
        pos = 0
        while True:
            match = _TERMINATOR.search(pending, pos)
            if match is None or (match.group() == "\r" and match.end() == len(pending)):
                break  # no complete line yet (a final CR may be the first half of CRLF)
            event = self._line(pending[pos:match.start()])
            pos = match.end()
            if event is not None:
                events.append(event)
        self._pending = pending[pos:]
        return events

    def _line(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:].lstrip(" "))
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type = value
        elif name == "data":
            self._data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry":
            if value.isdigit() and value.isascii():
                self.retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        self.last_event_id = self._id
        if self._data == "":
            self._type = ""
            return None
        data = self._data[:-1] if self._data.endswith("\n") else self._data
        event = Event(self._type or "message", data, self.last_event_id)
        self._data = ""
        self._type = ""
        return event
