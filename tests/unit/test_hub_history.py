"""The hub's shared history reads (`Hub.history`): many streams catching up at once (after
a reconnect, or a Redis restart) cost one read per page, not one per stream."""

from __future__ import annotations

import asyncio

from pushsvc.broker import History
from pushsvc.broker.memory import MemoryBroker
from pushsvc.events import Event
from pushsvc.hub import Hub, StreamQueue
from pushsvc.metrics import Metrics
from pushsvc.resume import Position


class CountingBroker(MemoryBroker):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[int, int | None]] = []
        self.gate = asyncio.Event()

    async def history(self, channel: str, after_seq: int, limit: int | None = None) -> History:
        self.reads.append((after_seq, limit))
        await asyncio.wait_for(self.gate.wait(), 5)
        return await super().history(channel, after_seq, limit)


async def test_streams_catching_up_at_once_share_one_read_per_page():
    broker = CountingBroker()
    hub = Hub(broker, Metrics())
    await hub.start()
    try:
        ids = (await broker.publish([Event(("news",), n) for n in range(30)])).ids
        epoch = ids[0][0].split("-")[0]
        hub.add(StreamQueue(("news",), 10, 1 << 20))  # the channel is live in this hub
        need = Position(epoch, 30)
        reads = [asyncio.create_task(hub.history("news", 10, need, 8)) for _ in range(50)]
        await asyncio.sleep(0)
        broker.gate.set()
        pages = await asyncio.gather(*reads)
        assert broker.reads == [(10, 8)]
        assert all([seq for seq, _ in p.entries] == list(range(11, 19)) for p in pages)
        # A stream a little further on is served by the same page; one past it needs its own.
        assert (await hub.history("news", 14, need, 8)).entries[0][0] == 11
        assert [s for s, _ in (await hub.history("news", 18, need, 8)).entries] == list(range(19, 27))
        assert broker.reads == [(10, 8), (18, 8)]
    finally:
        await hub.stop()
