"""A task cancelled while it connects to Redis stops (a real redis-server): redis-py's
connect swallows a cancel at some of its awaits, and pushsvc's `connect` raises it -- so a
shutdown never waits on a pub/sub supervisor that was asked to stop while (re)connecting."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import ConnectionPool

from pushsvc.broker.pubsub import PubSubLoop, connect

pytestmark = pytest.mark.redis

STEPS = range(0, 40)  # loop steps before the cancel: covers the socket and the handshake


async def test_a_connect_cancelled_at_any_step_raises_the_cancel_and_leaves_no_connection(redis_server):
    pool = ConnectionPool.from_url(redis_server.url)
    outcomes = []
    try:
        for steps in STEPS:
            conn = pool.make_connection()
            task = asyncio.ensure_future(connect(conn))
            for _ in range(steps):
                await asyncio.sleep(0)
            if task.done():  # connected before the cancel: nothing to prove at this step
                await conn.disconnect()
                continue
            task.cancel()
            async with asyncio.timeout(5):
                outcome = (await asyncio.gather(task, return_exceptions=True))[0]
            outcomes.append((steps, type(outcome).__name__, conn.is_connected))
            await conn.disconnect()
    finally:
        await pool.disconnect()
    assert len(outcomes) >= 10, outcomes  # enough steps fell inside the connect
    assert all(kind == "CancelledError" and not connected for _, kind, connected in outcomes), outcomes


async def test_a_pubsub_supervisor_stopped_while_it_connects_stops_at_once(redis_server):
    """What a shutdown does: `PubSubLoop.stop` right after `start`, at every step of the
    supervisor's first connect -- each stop returns (before the fix, about half waited for
    the next PING deadline or for ever)."""
    pool = ConnectionPool.from_url(redis_server.url)
    try:
        for steps in STEPS:
            loop = PubSubLoop(pool, label="t", timeout=30.0, ping_interval=30.0, backoff_cap=1.0,
                              handler_for=lambda name: (lambda data: None), on_confirmed=lambda name: None)
            loop.start()
            for _ in range(steps):
                await asyncio.sleep(0)
            async with asyncio.timeout(5):
                await loop.stop()
    finally:
        await pool.disconnect()
