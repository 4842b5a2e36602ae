"""The access log's direct line (`LineHandler.write_fields`, used by `RequestContext` for
its one line per request) is exactly the line logging would write through the handler and
formatter `configure` installs -- text and JSON, escaped fields, DEBUG lines of quiet paths --
and it is used only when nothing else (a handler, a filter) would see the record."""

from __future__ import annotations

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
    original = logs.LineHandler.write_fields

    def counted(self: Any, *args: Any) -> None:
        calls.append(1)
        original(self, *args)

    monkeypatch.setattr(logs.LineHandler, "write_fields", counted)
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
