"""Broker bookkeeping without I/O: who may give a position, and when a channel counts as
subscribed on Redis (both its public name and its internal live channel confirmed)."""

from __future__ import annotations

import asyncio

from pushsvc import wire
from pushsvc.broker.memory import MemoryBroker
from pushsvc.broker.redis import RedisBroker
from pushsvc.events import Event


class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subscribed: list[str] = []

    def on_message(self, channel: str, payload: bytes, trusted: bool = True) -> None:
        self.messages.append((channel, payload, trusted))

    def on_subscribed(self, channel: str) -> None:
        self.subscribed.append(channel)

    def local_subscribers(self, channel: str) -> int:
        return 0


async def test_memory_broker_publishes_trusted_and_injects_untrusted():
    broker, recorder = MemoryBroker(), Recorder()
    await broker.start(recorder)
    broker.subscribe("n")
    await broker.publish([Event(("n",), 1)])
    broker.inject("n", b'{"data":"raw","pushsvc":[9,"abcd1234"]}')
    assert [trusted for _, _, trusted in recorder.messages] == [True, False]


async def test_memory_broker_gives_every_copy_of_a_multi_channel_event_one_identity():
    broker, recorder = MemoryBroker(), Recorder()
    await broker.start(recorder)
    await broker.publish([Event(("a", "b"), 1)])
    copies = [(await broker.history(ch, 0)).entries[0][1] for ch in "ab"]
    assert copies[0] != copies[1] and copies[0].split(b'"')[-2] == copies[1].split(b'"')[-2]


async def test_a_redis_channel_is_subscribed_only_once_both_names_are_confirmed():
    broker, recorder = RedisBroker("redis://127.0.0.1:1/0"), Recorder()
    broker._listener = recorder
    broker.subscribe("news")
    names = {"news", wire.live_channel("news")}
    subs = broker._loop.subs
    assert subs.desired >= names
    subs.changes()
    for name in (wire.live_channel("news"),):
        assert subs.on_subscribe_reply(name)
        broker._on_confirmed(name)
    assert recorder.subscribed == []
    assert subs.on_subscribe_reply("news")
    broker._on_confirmed("news")
    assert recorder.subscribed == ["news"]
    broker.unsubscribe("news")
    assert not subs.desired & names
    await asyncio.sleep(0)
    await broker.stop()


def test_a_retried_request_gives_its_events_the_same_identity():
    from pushsvc.broker import new_epoch
    from pushsvc.broker.scripts import Idempotency, calls_for

    events = [Event(("a", "b"), 1), Event(("c",), 2)]
    idem = Idempotency("t:x", "order-1", 300)
    first, again = (calls_for(events, idem, 10, 60, new_epoch) for _ in range(2))
    eid = first[0][1][6]
    assert eid and eid == again[0][1][6]  # the same event identity on a retry
    assert first[1][1][6] == ""  # a one-channel event needs none
    assert calls_for(events, Idempotency("t:x", "order-2", 300), 10, 60, new_epoch)[0][1][6] != eid
