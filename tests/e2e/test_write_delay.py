"""PUSHSVC_WRITE_DELAY_MS on a real Hypercorn process fed through a real redis-server
(`pushsvc.publisher`, the native path): a burst of 200 events/s reaches the stream exactly
once and in order, in far fewer writes than events (chunks of the chunked response read
from the raw HTTP/1.1 framing, DATA frames on HTTP/2 (h2c), and
``pushsvc_stream_writes_total``), with an added publish-to-receipt latency of about the
delay; and a stream that ends while it cools ends at once, not at its flush instant --
through the fast door and through the Quart route, which share one pump."""

from __future__ import annotations

import asyncio
import signal
import statistics
import time

import h2.config
import h2.connection
import h2.events
import pytest

from pushsvc.publisher import AsyncPublisher
from tests.support.h2stall import H2cReader
from tests.support.helpers import metric
from tests.support.sse_client import SSEClient
from tests.support.whatwg import Event, Parser

pytestmark = pytest.mark.e2e

DOORS = {"fast door": {}, "Quart route": {"PUSHSVC_CORS_ORIGINS": "https://app.example"}}
RATE = 200  # events per second
COUNT = 200


class TimedClient(SSEClient):
    """An SSE client that counts the response's chunks (one per server write on HTTP/1.1)
    and notes when each event arrived."""

    chunks = 0
    arrivals: list[float]

    async def _read_chunk(self) -> bytes:
        data = await super()._read_chunk()
        if data:
            self.chunks += 1
        return data

    async def _pump(self) -> None:
        before = len(self._events)
        await super()._pump()
        now = time.monotonic()
        if not hasattr(self, "arrivals"):
            self.arrivals = []
        self.arrivals += [now] * (len(self._events) - before)


class H2cStream(H2cReader):
    """One SSE stream over cleartext HTTP/2 (prior knowledge) with the h2 library: its
    events, when each arrived, and how many DATA frames carried them (one per server write
    while a write fits in a frame)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.parser = Parser()
        self.events: list[Event] = []
        self.arrivals: list[float] = []
        self.chunks = 0
        self.stream_id = 0
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int, channel: str) -> H2cStream:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        client = cls(reader, writer)
        client.conn.initiate_connection()
        client.stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(client.stream_id, [(":method", "GET"), (":scheme", "http"),
                                                    (":authority", "127.0.0.1"),
                                                    (":path", f"/stream?channel={channel}")], end_stream=True)
        writer.write(client.conn.data_to_send())
        client._task = asyncio.create_task(client._read())
        return client

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            now = time.monotonic()
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived) and event.stream_id == self.stream_id:
                    self.chunks += 1
                    parsed = self.parser.feed(event.data)
                    self.events += parsed
                    self.arrivals += [now] * len(parsed)
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self.writer.write(self.conn.data_to_send())
            self.changed.set()


async def publish_at_rate(publisher: AsyncPublisher, channel: str) -> list[float]:
    """COUNT events at RATE per second; the data holds the event's number, and the returned
    list when each was handed to Redis (CLOCK_MONOTONIC, shared with the client)."""
    sent: list[float] = []
    start = time.monotonic()
    for i in range(COUNT):
        pause = start + i / RATE - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        sent.append(time.monotonic())
        await publisher.publish(channel, str(i))
    return sent


@pytest.mark.parametrize("door", DOORS)
async def test_a_burst_arrives_exactly_once_in_order_in_far_fewer_writes_within_about_the_delay(
    service_factory, redis_url, http, door
):
    delay = 0.05
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_WRITE_DELAY_MS": "50", **DOORS[door]})
    publisher = AsyncPublisher(redis_url)
    client = await TimedClient.open(service.port, ["burst"])
    try:
        await client.wait_open()
        opening_chunks = client.chunks
        reading = asyncio.create_task(client.events(COUNT, timeout=30))
        sent = await publish_at_rate(publisher, "burst")
        events = await reading
        writes = client.chunks - opening_chunks
    finally:
        await client.close()
        await publisher.aclose()
    assert [e.data for e in events] == [str(i) for i in range(COUNT)]  # each once, in order
    seqs = [int(e.last_event_id.rsplit("-", 1)[1]) for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + COUNT))
    # One write per delay instead of one per event: at 200 events/s and 50 ms, about 25 writes.
    assert writes <= COUNT // 3, writes
    latencies = [arrived - sent[i] for i, arrived in enumerate(client.arrivals[-COUNT:])]
    assert statistics.median(latencies) <= delay + 0.1, statistics.median(latencies)
    assert max(latencies) <= delay + 1.0, max(latencies)  # generous: a shared, noisy machine
    assert await metric(http, service, "pushsvc_events_delivered_total") == COUNT
    assert await metric(http, service, "pushsvc_stream_writes_total") <= COUNT // 3 + opening_chunks


async def test_many_streams_of_one_channel_each_get_every_event_once_in_order(service_factory, redis_url, http):
    """20 streams whose flush instants differ (they open one after another) share the
    channel's log of parked frames: each takes exactly its own slice, whatever the others do."""
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_WRITE_DELAY_MS": "10",
                               "PUSHSVC_QUEUE_SIZE": "100", "PUSHSVC_MAX_BATCH": "100"})  # ripe at 50 events
    publisher = AsyncPublisher(redis_url)
    clients = []
    try:
        for _ in range(20):
            clients.append(await TimedClient.open(service.port, ["shared"]))
            await clients[-1].wait_open()
            await asyncio.sleep(0.003)  # spread the openings over the grid
        readers = [asyncio.create_task(c.events(COUNT, timeout=30)) for c in clients]
        for start in range(0, COUNT, 50):  # bursts of 50 at once (ripe), then paced
            await asyncio.gather(*[publisher.publish("shared", str(i)) for i in range(start, start + 25)])
            for i in range(start + 25, start + 50):
                await publisher.publish("shared", str(i))
        received = await asyncio.gather(*readers)
    finally:
        for c in clients:
            await c.close()
        await publisher.aclose()
    order = [e.data for e in received[0]]  # the channel's order (concurrent publishes race)
    assert sorted(order, key=int) == [str(i) for i in range(COUNT)]
    first = int(received[0][0].last_event_id.rsplit("-", 1)[1])
    for events in received:  # every stream: every event once, in the channel's sequence
        assert [e.data for e in events] == order
        assert [int(e.last_event_id.rsplit("-", 1)[1]) for e in events] == list(range(first, first + COUNT))
    assert await metric(http, service, "pushsvc_slow_consumer_disconnects_total") == 0
    assert await metric(http, service, "pushsvc_events_delivered_total") == 20 * COUNT
    assert await metric(http, service, "pushsvc_events_replayed_total") == 0  # no gap healed from history


@pytest.mark.parametrize("door", DOORS)
async def test_over_http2_a_burst_arrives_exactly_once_in_order_in_far_fewer_data_frames(
    service_factory, redis_url, http, door
):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_WRITE_DELAY_MS": "50", **DOORS[door]})
    publisher = AsyncPublisher(redis_url)
    client = await H2cStream.open(service.port, "burst")
    try:
        await client.wait_for(lambda: client.parser.last_event_id != "", 10)  # synced
        opening_chunks = client.chunks
        sent = await publish_at_rate(publisher, "burst")
        await client.wait_for(lambda: len(client.events) >= COUNT, 30)
        writes = client.chunks - opening_chunks
    finally:
        await client.close()
        await publisher.aclose()
    assert [e.data for e in client.events] == [str(i) for i in range(COUNT)]
    assert writes <= COUNT // 3, writes
    latencies = [arrived - sent[i] for i, arrived in enumerate(client.arrivals)]
    assert statistics.median(latencies) <= 0.05 + 0.1, statistics.median(latencies)
    assert await metric(http, service, "pushsvc_stream_writes_total") <= COUNT // 3 + opening_chunks


@pytest.mark.parametrize("door", DOORS)
async def test_a_stream_ending_while_it_cools_ends_at_once_not_at_its_flush_instant(
    service_factory, redis_url, http, door
):
    """With the longest delay (1 s) a stream that has just written holds its next event for
    up to a second; a shutdown meanwhile ends it at once, the held event and the final
    ``retry:`` in its last write."""
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_WRITE_DELAY_MS": "1000", **DOORS[door]})
    publisher = AsyncPublisher(redis_url)
    client = await TimedClient.open(service.port, ["ending"])
    try:
        await client.wait_open()  # its opening write: cooling from here, for 0.75 to 1 s
        await publisher.publish("ending", "held")
        async with asyncio.timeout(10):  # held by the cooling stream (not still on its way from Redis)
            while await metric(http, service, "pushsvc_events_received_total") < 1:
                await asyncio.sleep(0.01)
        assert service.proc is not None
        asked = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        events = await client.until_end(timeout=10)
        took = time.monotonic() - asked
    finally:
        await client.close()
        await publisher.aclose()
    assert [e.data for e in events] == ["held"]
    assert client.completed and b"retry: " in bytes(client.raw).rsplit(b"held", 1)[1]
    assert took < 0.5, took  # the flush instant was up to a second away
