"""The access log's direct line (`LineHandler.write_access` / `write_fields`, used by `RequestContext`
for its one line per request) is exactly the line logging would write through the handler and
formatter `configure` installs -- text and JSON, escaped fields, DEBUG lines of quiet paths --
and it is used only when nothing else (a handler, a filter) would see the record.  Direct
lines are held and written together: `FLUSH_LINES` at once, or `FLUSH_SECONDS` after the
first, always before any other line and at exit."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from pushsvc import logs
from pushsvc.asgi import RequestContext, access_log

SCOPES: list[dict[str, Any]] = [
    {"client": ("127.0.0.1", 1), "method": "POST", "path": "/publish"},
    {"client": ("203.0.113.9", 0), "method": "GET", "path": "/x\n2026-01-01 INFO forged\x1b[31m\u2028é"},
    {"method": "PUT", "path": "/metrics"},  # no client; a quiet path: DEBUG
    {"client": ("198.51.100.7\t\x85", 0), "method": "GET\x1b", "path": "/clean"},  # (a forwarded client's text)
]
CREATED = [1764521999.0, 1764521999.9996, 1764522000.05]


@pytest.fixture
def configured() -> Iterator[None]:
    pushsvc = logging.getLogger("pushsvc")
    saved = pushsvc.handlers[:], pushsvc.level, pushsvc.propagate
    yield
    pushsvc.handlers[:], pushsvc.level, pushsvc.propagate = saved[0], saved[1], saved[2]
    access_log.filters.clear()


def lines(fmt: str, direct: bool, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    logs.configure(fmt, "DEBUG")
    handler = logging.getLogger("pushsvc").handlers[0]
    assert isinstance(handler, logs.LineHandler)
    handler.stream = out = io.StringIO()
    calls: list[int] = []
    for name in ("write_access", "write_fields"):
        original = getattr(logs.LineHandler, name)

        def counted(self: Any, *args: Any, original: Any = original, **kwargs: Any) -> None:
            calls.append(1)
            original(self, *args, **kwargs)

        monkeypatch.setattr(logs.LineHandler, name, counted)
    if not direct:
        access_log.addFilter(lambda record: True)  # a filter must see records: logging's own path
    for created in CREATED:
        monkeypatch.setattr(logs.time, "time", lambda created=created: created)
        monkeypatch.setattr(logging.time, "time", lambda created=created: created)
        for status, scope in enumerate(SCOPES):
            RequestContext._log(scope, f"req-{status}:/+=@", 200 + status, 0.00123 + status)
    access_log.filters.clear()
    assert len(calls) == (len(CREATED) * len(SCOPES) if direct else 0)
    return out.getvalue().splitlines()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_direct_line_is_the_line_logging_writes(fmt, configured, monkeypatch):
    direct = lines(fmt, True, monkeypatch)
    assert direct == lines(fmt, False, monkeypatch)
    assert len(direct) == len(CREATED) * len(SCOPES)
    assert all("\n" not in line and "\x1b" not in line for line in direct)


def test_the_direct_line_is_not_used_when_something_else_would_see_the_record(configured):
    logs.configure("text", "INFO")
    assert logs.direct_handler(access_log, logging.INFO) is not None
    seen: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    for place in (access_log, logging.getLogger("pushsvc")):
        extra = Catch()
        place.addHandler(extra)
        try:
            assert logs.direct_handler(access_log, logging.INFO) is None
            RequestContext._log(SCOPES[0], "seen", 202, 0.001)
        finally:
            place.removeHandler(extra)
    assert [record.request_id for record in seen] == ["seen", "seen"]  # type: ignore[attr-defined]
    logging.getLogger("pushsvc").handlers[0].addFilter(lambda record: True)
    assert logs.direct_handler(access_log, logging.INFO) is None
    logs.configure("text", "INFO")
    logging.getLogger("pushsvc").handlers[0].formatter.datefmt = "%H"  # type: ignore[union-attr]
    assert logs.direct_handler(access_log, logging.INFO) is None


class Writes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        self.unflushed = True
        return super().write(text)

    def flush(self) -> None:
        self.unflushed = False


async def written(out: Writes, writes: int) -> None:
    async with asyncio.timeout(5):
        while out.writes < writes:
            await asyncio.sleep(0.01)


async def test_direct_lines_leave_together_within_the_flush_time_and_before_any_later_line(configured):
    logs.configure("text", "INFO")
    handler = logging.getLogger("pushsvc").handlers[0]
    handler.stream = out = Writes()
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(5):
        RequestContext._log(SCOPES[0], f"r{n}", 202, 0.001)
    await asyncio.sleep(0)
    assert out.writes == 0  # held
    await written(out, 1)
    assert loop.time() - started >= logs.FLUSH_SECONDS * 0.9
    ids = [line.split("request_id=")[1].split()[0] for line in out.getvalue().splitlines()]
    assert out.writes == 1 and not out.unflushed and ids == [f"r{n}" for n in range(5)]
    RequestContext._log(SCOPES[0], "before", 202, 0.001)
    logging.getLogger("pushsvc.app").warning("after")  # another line: the pending one goes first
    text = out.getvalue().splitlines()
    assert "request_id=before" in text[-2] and text[-1].endswith("pushsvc.app: after")
    RequestContext._log(SCOPES[0], "last", 202, 0.001)
    handler.flush()  # what logging.shutdown() does at exit
    assert "request_id=last" in out.getvalue().splitlines()[-1]
    writes = out.writes
    for n in range(logs.FLUSH_LINES):
        RequestContext._log(SCOPES[0], f"m{n}", 202, 0.001)
    assert out.writes == writes + 1  # a full buffer is written at once
    assert f"request_id=m{logs.FLUSH_LINES - 1}" in out.getvalue().splitlines()[-1]


def test_lines_held_when_a_loop_ended_leave_with_the_next_loops_lines(configured):
    logs.configure("text", "INFO")
    handler = logging.getLogger("pushsvc").handlers[0]
    handler.stream = out = Writes()

    async def log(request_id: str, wait: bool) -> None:
        RequestContext._log(SCOPES[0], request_id, 202, 0.001)
        if wait:
            await written(out, 1)

    asyncio.run(log("first loop", wait=False))  # ends before its flush time
    assert out.writes == 0
    asyncio.run(log("second loop", wait=True))  # a timer of its own, not the first loop's
    assert ["first loop", "second loop"] == [
        line.split("request_id=")[1].split(" client")[0] for line in out.getvalue().splitlines()]


def test_no_character_the_escape_rewrites_is_printable():
    # `escape_controls`, `printable` and `write_text` skip the scan for text that `str.isprintable` accepts.
    controls = [chr(c) for c in range(0x3000) if logs._CONTROLS.match(chr(c))]
    assert len(controls) == 32 + 33 + 2 and not any(c.isprintable() for c in controls)
    assert logs.escape_controls("a\u2028b\x85c\x1b") == "a\\u2028b\\x85c\\x1b"


def test_the_direct_lines_duration_is_what_round_gives():
    # The direct line formats the duration with ``:.1f``; logging's path gets round(x, 1).
    seconds = [n / 1e7 for n in range(0, 20000)] + [n / 1e4 + 0.00005 for n in range(0, 20000)] + [86400.0, 1e9]
    assert [f"{s * 1000:.1f}" for s in seconds] == [str(round(s * 1000, 1)) for s in seconds]
