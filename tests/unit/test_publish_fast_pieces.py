"""The pieces that make a single publish cheaper give exactly what the general code gives:
EVALSHA packed as redis-py packs it, the internal-token calls as the plans build them, the
202 answer as `json_bytes` renders it, the body deadline as a timer would, and tokens drawn
in bulk never shared with a forked child."""

from __future__ import annotations

import asyncio
import os
import sys
from itertools import count

import pytest
from redis.asyncio.connection import Connection
from werkzeug.exceptions import RequestTimeout

from pushsvc import randomness, wire
from pushsvc.broker import scripts
from pushsvc.broker.redis import pack_evalsha
from pushsvc.broker.scripts import Idempotency, calls_for
from pushsvc.core.errors import json_bytes
from pushsvc.core.publishing import answer_bytes
from pushsvc.events import event_from_json
from pushsvc.fastpath import _BodyDeadlines

SHA = "e0e1f9fabfc9d4800c877a703b823ac0578ff831"
EVENTS = [
    event_from_json({"channel": "news", "data": {"text": "héllo ✓"}, "type": "update", "retry": 1000}, 65536),
    event_from_json({"channel": ["a", "b:c", "d/e@f"], "data": [1, 2.5, None]}, 65536),
    event_from_json({"data": "default channel"}, 65536),
]


def fresh_epochs():
    numbers = count()
    return lambda: f"ep{next(numbers):06d}"


@pytest.mark.parametrize("idem", [None, Idempotency("t:ünï", "order-7", 300), Idempotency("a", None, 300)])
def test_evalsha_is_packed_byte_for_byte_as_redis_py_packs_it(idem):
    calls = calls_for(EVENTS, idem, 1000, 3600, fresh_epochs())
    calls[0][1].append("non-ascii ✓ text")  # whatever a caller passes: str, int, bytes
    packer = Connection()
    expected = b"".join(
        b"".join(packer.pack_command("EVALSHA", SHA, len(keys), *keys, *args)) for keys, args in calls
    )
    assert pack_evalsha(SHA, calls) == expected


def test_the_internal_token_calls_are_what_the_plans_build(monkeypatch):
    monkeypatch.setattr(scripts, "token_hex16", lambda: "0123456789abcdef")
    fast = scripts._internal_calls(EVENTS, 1000, 3600, fresh_epochs())
    epochs = fresh_epochs()
    general = [plan.call(plan.event.channels, plan.home, 1000, 3600, epochs) for plan in scripts._plans(EVENTS, None)]
    assert fast == general
    assert calls_for(EVENTS, None, 1000, 3600, fresh_epochs()) == general


@pytest.mark.parametrize("result", [
    {"events": [{"channel": "news", "id": "abcdefgh-1"}], "id": "abcdefgh-1"},
    {"events": [{"channel": "a", "id": "abcdefgh-7"}, {"channel": "b:c/d@e.f_g-h", "id": "zz2345ab-123456"}]},
    {"events": [{"channel": "x", "id": "abcdefgh-1"}]},
])
def test_the_202_answer_is_what_json_bytes_renders(result):
    assert answer_bytes(result) == json_bytes(result)


async def test_a_body_that_never_arrives_gets_408_within_the_timeout_and_a_tick():
    deadlines = _BodyDeadlines(0.1)

    async def never() -> bytes:
        await asyncio.Event().wait()
        return b""

    async def body() -> bytes:
        await asyncio.sleep(0)
        return b"{}"

    started = asyncio.get_running_loop().time()
    slow = asyncio.ensure_future(deadlines.read(never))
    fast = [asyncio.ensure_future(deadlines.read(body)) for _ in range(5)]
    assert await asyncio.wait_for(asyncio.gather(*fast), 5) == [b"{}"] * 5
    with pytest.raises(RequestTimeout):
        await asyncio.wait_for(slow, 5)
    assert asyncio.get_running_loop().time() - started < 0.5
    assert deadlines._reading == {} and deadlines._expired == set()


async def test_a_body_read_cancelled_by_someone_else_stays_cancelled():
    deadlines = _BodyDeadlines(30)

    async def never() -> bytes:
        await asyncio.Event().wait()
        return b""

    reader = asyncio.ensure_future(deadlines.read(never))
    await asyncio.sleep(0.01)
    reader.cancel()  # the client went away: not a 408
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(reader, 5)


def test_bulk_tokens_have_their_formats_and_do_not_repeat():
    hexes = [randomness.token_hex16() for _ in range(500)]
    ids = [randomness.token_hex32() for _ in range(500)]  # across refills too (64 per draw)
    epochs = [randomness.token_b32_8() for _ in range(500)]
    assert len(set(hexes)) == 500 and all(len(t) == 16 and int(t, 16) >= 0 for t in hexes)
    assert len(set(ids)) == 500 and all(len(t) == 32 and int(t, 16) >= 0 for t in ids)
    assert len(set(epochs)) == 500 and all(len(t) == 8 and set(t) <= set("abcdefghijklmnopqrstuvwxyz234567")
                                           for t in epochs)


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="needs os.fork")
def test_a_forked_child_never_hands_out_its_parents_buffered_tokens():
    randomness.token_hex16()
    randomness.token_b32_8()  # both buffers now hold tokens the parent will hand out next
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next tokens and leave at once
        try:
            os.write(write_end, f"{randomness.token_hex16()} {randomness.token_b32_8()}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode().split()
    os.waitpid(pid, 0)
    assert child[0] != randomness.token_hex16()
    assert child[1] != randomness.token_b32_8()


@pytest.mark.parametrize("channel", ["sse", "user:42", "a.b-c_d", "x" * 200])
def test_channel_keys_are_the_three_names_the_script_uses(channel):
    assert wire.channel_keys(channel) == (wire.meta_key(channel), wire.history_key(channel), wire.live_channel(channel))
