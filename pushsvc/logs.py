"""Logging: one line per significant event, as text or as one JSON object per line.

`extra={...}` fields are kept as structured fields; tokens and payloads are never logged.
The text format escapes control characters (CR, LF, ESC ...) in the message and in every
field, so no logged value (a URL path with ``%0a``, a header) can start a forged line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from contextvars import ContextVar
from typing import Any

#: The id of the request being handled (set by `pushsvc.asgi.RequestContext`).
request_id_var: ContextVar[str | None] = ContextVar("pushsvc_request_id", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_controls(value: object) -> str:
    """`value` as text on one line: control characters written as ``\\n``, ``\\x1b`` ..."""
    text = str(value)
    if text.isprintable():  # (every character `_CONTROLS` matches is not printable)
        return text
    return _CONTROLS.sub(_escape_one, text) if _CONTROLS.search(text) else text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to lines logged while a request is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = request_id_var.get()
            if request_id is not None:
                record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        values = dict(record.__dict__, message=escape_controls(record.message))
        return self._fmt % values if self._fmt else values["message"]

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{escape_controls(k)}={escape_controls(v)}" for k, v in extras.items())
        return line


#: Direct lines are written together: when this many are waiting, or `FLUSH_SECONDS` after
#: the first of them, whichever comes first (nginx's ``access_log ... buffer= flush=``, with
#: bounds fit for one line per request), and always before any other line and at exit.
FLUSH_LINES = 64
FLUSH_SECONDS = 0.1


def printable(value: object) -> str:
    """`value` as text on one line (`escape_controls`), without the call when `value` is
    text with nothing to escape (most of it)."""
    if type(value) is str and value.isprintable():
        return value
    return escape_controls(value)


#: An access line not formatted yet: (time.time(), logger, level, request id, client,
#: method, path, status, seconds).
_Access = tuple[float, logging.Logger, int, str, object, object, object, int, float]


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure` installs: a StreamHandler that can also write a line built
    directly from its fields (`write_fields`, `write_text`, `write_access`), exactly as its
    formatter would format the record -- for the access log's one line per request,
    without a LogRecord, the filter pass and the generic formatting.

    Those lines are held and written together, in one write (`FLUSH_LINES`,
    `FLUSH_SECONDS`), always before any line logged after them; `flush` (logging's
    shutdown calls it) writes what is left.  An access line (`write_access`) is formatted
    only then, from its fields and the time it was logged at: formatting the lines in one
    loop, away from the requests, measured cheaper than formatting each while its request
    is answered (`docs/performance.md`, single-event ``POST /publish``)."""

    def __init__(self) -> None:
        super().__init__()
        #: Direct lines not written yet (text, or an access line's fields).
        self._pending: list[str | _Access] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    _second = -1
    _local = ""  # the text format's time, to the second (time.localtime)
    _utc = ""  # the JSON format's (time.gmtime)

    @property
    def text(self) -> bool:
        """Its lines are text (`write_text` takes them), not JSON (`write_fields` only)."""
        return type(self.formatter) is not JsonFormatter

    def _seconds(self, created: float) -> int:
        """`created`'s milliseconds; `_local` and `_utc` hold its second."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return int((created - second) * 1000)

    def write_fields(self, logger: logging.Logger, level: int, message: str, fields: dict[str, Any]) -> None:
        if self.text:
            # The formatter escapes the message and each field; escaping is per character, so
            # escaping them joined is the same (one scan instead of one per field).
            self.write_text(logger, level, " ".join([message, *[f"{k}={v}" for k, v in fields.items()]]))
            return
        msecs = self._seconds(time.time())
        entry: dict[str, Any] = {
            "ts": f"{self._utc}.{msecs:03d}Z", "level": logging.getLevelName(level).lower(),
            "logger": logger.name, "pid": os.getpid() if logging.logProcesses else None, "msg": message,
        }
        entry.update(fields)
        self._add(json.dumps(entry, default=str))

    def write_text(self, logger: logging.Logger, level: int, text: str) -> None:
        """A text line (`text` only): the message and its ``key=value`` fields, joined by
        spaces, as the text formatter joins them (it escapes them here)."""
        msecs = self._seconds(time.time())
        if not text.isprintable():  # (`escape_controls` without its call, for most lines)
            text = escape_controls(text)
        self._add(f"{self._local},{msecs:03d} {logging.getLevelName(level)} {logger.name}: {text}")

    def write_access(
        self, logger: logging.Logger, level: int, request_id: str, client: object, method: object,
        path: object, status: int, seconds: float,
    ) -> None:
        """`RequestContext`'s access line (`text` only), as `write_text` would write
        ``request request_id=.. client=.. method=.. path=.. status=.. duration_ms=..``,
        formatted when it is written.  `request_id` must be printable (checked or ours)."""
        self._add((time.time(), logger, level, request_id, client, method, path, status, seconds))

    def _access_line(self, item: _Access) -> str:
        created, logger, level, request_id, client, method, path, status, seconds = item
        msecs = self._seconds(created)
        # Only the peer's parts can hold a control character: each is escaped on its own, so
        # the line needs no scan.  (``:.1f`` writes what ``round(x, 1)`` does, under 10**15 ms.)
        return (
            f"{self._local},{msecs:03d} {logging.getLevelName(level)} {logger.name}: request "
            f"request_id={request_id} client={printable(client)} method={printable(method)} "
            f"path={printable(path)} status={status} duration_ms={seconds * 1000:.1f}"
        )

    def _add(self, line: str | _Access) -> None:
        pending = self._pending
        pending.append(line)
        if len(pending) >= FLUSH_LINES:
            self.flush()
            return
        if self._timer is not None and self._timer_loop is not None and self._timer_loop.is_running():
            return  # its timer writes this line too (without asking for the running loop: a getpid)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: at once
            self.flush()
            return
        # (a timer of a loop that stopped is not waited for: this loop sets its own)
        self._timer = loop.call_later(FLUSH_SECONDS, self._flush_due)
        self._timer_loop = loop

    def _flush_due(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write the pending direct lines, in one write, then flush the stream."""
        self.acquire()
        try:
            if self._pending:
                pending, self._pending = self._pending, []
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                try:
                    lines = [item if type(item) is str else self._access_line(item) for item in pending]  # type: ignore[arg-type]
                    self.stream.write(self.terminator.join(lines) + self.terminator)
                except RecursionError:
                    raise
                except Exception:
                    self.handleError(logging.makeLogRecord({"msg": "access lines lost", "levelno": logging.ERROR}))
            super().flush()
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:  # the lines before it first, in order
            self.flush()
        super().emit(record)


def direct_handler(logger: logging.Logger, level: int) -> LineHandler | None:
    """The `LineHandler` that `logger` (a child of ``pushsvc``, enabled for `level`) reaches,
    when `write_fields` gives exactly what logging would: the handler and formatter
    `configure` set up, no other handler or filter on the way; else None."""
    parent = logger.parent
    if logger.handlers or logger.filters or not logger.propagate or parent is None or parent.name != "pushsvc":
        return None
    handlers = parent.handlers
    if parent.filters or parent.propagate or parent.disabled or logger.disabled or len(handlers) != 1:
        return None
    handler = handlers[0]
    if type(handler) is not LineHandler or level < handler.level:
        return None
    filters = handler.filters
    if len(filters) != 1 or type(filters[0]) is not RequestIdFilter:
        return None
    formatter = handler.formatter
    if type(formatter) is TextFormatter:
        if formatter.converter is not time.localtime or formatter.datefmt is not None:
            return None
    elif type(formatter) is not JsonFormatter:
        return None
    return handler


def configure(fmt: str = "text", level: str = "INFO") -> None:
    handler = LineHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger("pushsvc")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def adopt(logger: logging.Logger) -> None:
    """Give another library's logger (Hypercorn's) the format `configure` set up."""
    ours = logging.getLogger("pushsvc").handlers
    if ours and ours[0].formatter is not None:
        for handler in logger.handlers:
            handler.setFormatter(ours[0].formatter)
