"""The Hypercorn HTTP/2 correction is applied only to the version whose code was read."""

from __future__ import annotations

import logging

import pytest
from hypercorn.protocol import h2 as hyper_h2

from pushsvc import h2fix


def test_an_unchecked_hypercorn_version_is_left_alone_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(h2fix, "_applied", False)
    monkeypatch.setattr(h2fix, "version", lambda name: "0.99.0")
    pop, close = hyper_h2.StreamBuffer.pop, hyper_h2.H2Protocol._close_stream
    with caplog.at_level(logging.WARNING, logger="pushsvc.h2fix"):
        assert h2fix.correct_hypercorn_h2() is False
    assert (hyper_h2.StreamBuffer.pop, hyper_h2.H2Protocol._close_stream) == (pop, close)
    assert any("0.99.0" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


@pytest.mark.skipif(hyper_h2.BUFFER_LOW_WATER <= 0, reason="unexpected Hypercorn constants")
async def test_a_zero_window_pop_keeps_the_writer_waiting_once_corrected():
    assert h2fix.correct_hypercorn_h2() is True  # the installed version is a checked one
    from hypercorn.asyncio.worker_context import EventWrapper

    buffer = hyper_h2.StreamBuffer(EventWrapper)
    buffer.buffer.extend(b"x" * hyper_h2.BUFFER_HIGH_WATER)
    assert await buffer.pop(0) == b""  # what the send task does on a zero window
    assert not buffer._paused.is_set()  # Hypercorn 0.18 set it here: the app's send never waited
    await buffer.pop(hyper_h2.BUFFER_HIGH_WATER)
    assert buffer._paused.is_set()
