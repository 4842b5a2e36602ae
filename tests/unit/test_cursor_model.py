"""Stateful property test of the stream cursor against a plain model of what a browser
must receive.

Hypothesis interleaves publishes (to one or several channels, copies arriving in any
order), connections with any id (none, the last one seen, an old one, one beyond the
channel's sequence, a garbled one), late subscription confirmations (synced at the read
position or just before the first live frame), history trims, lost history (a new
epoch), pub/sub reconnects that lose live frames, slow-consumer cuts, chunks taken by the
pump, and history pages that start early (as a read shared with other streams does).
After every chunk the bytes are read as a browser would, block by block, and checked:

* an event's id moves the channel it came from to that event; any channel moves only over
  events this connection received (never a silent gap), and an event's copies on other
  channels are passed over, not delivered again (one event, one delivery);
* an event is delivered at most once per connection;
* a reset names its channels and the position it continues from (its own id), and only
  when history cannot continue: the id was unreadable or beyond the channel's sequence,
  the epoch changed, or the next event is no longer retained;
* once everything is delivered (`settle`), every connection stands at its channels'
  current positions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from unittest import mock

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import pushsvc.cursor as cursor_module
from pushsvc.cursor import OVERFLOW, Sync
from pushsvc.events import Frame
from pushsvc.resume import Position, format_stream_id, parse_stream_id
from tests.support.cursor_driver import Driver, Store, parse_with_eids

CHANNELS = ("a", "b", "c")
CHANNEL_SETS = [("a",), ("b",), ("a", "b"), ("a", "b", "c")]


def blocks(chunk: bytes) -> list[dict[str, str]]:
    """The SSE blocks of a chunk as fields (the cursor writes whole blocks)."""
    out = []
    for raw in chunk.decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in raw.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = fields[name] + "\n" + value if name in fields else value
        if fields:
            out.append(fields)
    return out


@dataclass
class Connection:
    channels: tuple[str, ...]
    driver: Driver
    garbled: bool
    seen: list[Position | None]  # per channel: the position the browser holds (None: not stated yet)
    delivered: set[str] = field(default_factory=set)  # data of events received
    synced: bool = False
    fresh: bool = False  # no id: each channel's first position is its sync position
    stated: set[int] = field(default_factory=set)  # channels that carried an event or a reset
    first_live: dict[str, Position] = field(default_factory=dict)
    checked: int = 0  # chunks checked so far


class CursorModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = Store(cap=6)
        self.conns: dict[int, Connection] = {}
        self.last_ids: dict[tuple[str, ...], list[str]] = {s: [] for s in CHANNEL_SETS}
        self.copies: dict[str, dict[str, Position]] = {}  # data -> its position on each channel
        self.by_position: dict[tuple[str, Position], str] = {}  # (channel, position) -> data
        self.count = 0
        self.reached: dict[tuple[str, str | None], int] = {}  # (channel, epoch) -> last seq published
        self.patch = mock.patch.object(cursor_module, "parse_message", parse_with_eids)
        self.patch.start()

    def teardown(self) -> None:
        self.patch.stop()

    # -- the world -------------------------------------------------------------------------

    @rule(channels=st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=3, unique=True), data=st.data())
    def publish(self, channels: list[str], data: st.DataObject) -> None:
        self.count += 1
        name = f"n{self.count}"
        eid = name if len(channels) > 1 else None
        frames = [self.store.publish(c, name, eid) for c in channels]
        self.copies[name] = {f.channel: Position(f.epoch, f.seq) for f in frames}
        for f in frames:
            self.by_position[f.channel, Position(f.epoch, f.seq)] = name
            self.reached[f.channel, f.epoch] = f.seq
        for conn in self.conns.values():
            mine = [f for f in frames if f.channel in conn.channels]
            for f in data.draw(st.permutations(mine)):
                conn.first_live.setdefault(f.channel, Position(f.epoch, f.seq))
                conn.driver.queue.append(f)

    @rule(channel=st.sampled_from(CHANNELS), keep=st.integers(0, 5))
    def trim(self, channel: str, keep: int) -> None:
        self.store.trim(channel, keep)

    @rule(channel=st.sampled_from(CHANNELS))
    def lose_history(self, channel: str) -> None:
        """Redis restarted empty: a new epoch, and every subscription is reconfirmed."""
        self.store.lose(channel)
        for conn in self.conns.values():
            if channel in conn.channels and conn.synced:
                conn.driver.queue.append(Sync(channel, self.store.position(channel)))

    # -- connections -------------------------------------------------------------------------

    @rule(slot=st.integers(0, 2), channels=st.sampled_from(CHANNEL_SETS),
          kind=st.sampled_from(["none", "last", "old", "future", "garbled"]), synced=st.booleans(),
          data=st.data())
    def connect(self, slot: int, channels: tuple[str, ...], kind: str, synced: bool, data: st.DataObject) -> None:
        self.conns.pop(slot, None)
        known = self.last_ids[channels]
        text: str | None = None
        if kind == "last" and known:
            text = known[-1]
        elif kind == "old" and known:
            text = data.draw(st.sampled_from(known))
        elif kind == "future":
            positions = [self.store.position(c) for c in channels]
            k = data.draw(st.integers(0, len(channels) - 1))
            if positions[k].epoch is not None:
                positions[k] = Position(positions[k].epoch, positions[k].seq + 10**15)
                text = format_stream_id(positions)
        elif kind == "garbled":
            text = data.draw(st.sampled_from(["zz", "0.0.0.0", "abc-1", "-"]))
        resume = parse_stream_id(text, len(channels)) if text else None
        garbled = text is not None and resume is None
        driver = Driver.open(self.store, channels, resume=resume, unreadable=garbled, chunk_bytes=200,
                             max_items=40, max_bytes=1 << 20)
        driver.shared_slack = data.draw(st.integers(0, 3))
        seen: list[Position | None] = list(resume) if resume else [None] * len(channels)
        conn = self.conns[slot] = Connection(channels, driver, garbled, seen, fresh=resume is None)
        if synced:
            self._confirm(conn, at_first_live=False)

    def _confirm(self, conn: Connection, at_first_live: bool) -> None:
        for c in conn.channels:
            position = self.store.position(c)
            first = conn.first_live.get(c)
            if at_first_live and first is not None and first.epoch == position.epoch:
                position = Position(first.epoch, first.seq - 1)
            conn.driver.queue.append(Sync(c, position))
        conn.synced = True

    @precondition(lambda self: any(not c.synced for c in self.conns.values()))
    @rule(data=st.data(), at_first_live=st.booleans())
    def confirm(self, data: st.DataObject, at_first_live: bool) -> None:
        """The hub's subscription is confirmed: Sync at the read position or just before
        the first live frame seen meanwhile."""
        slot = data.draw(st.sampled_from(sorted(s for s, c in self.conns.items() if not c.synced)))
        self._confirm(self.conns[slot], at_first_live)

    @precondition(lambda self: any(c.synced for c in self.conns.values()))
    @rule(data=st.data())
    def pubsub_reconnect(self, data: st.DataObject) -> None:
        """The pub/sub connection dropped: some live frames never arrive, then a resync."""
        slot = data.draw(st.sampled_from(sorted(s for s, c in self.conns.items() if c.synced)))
        conn = self.conns[slot]
        lost = data.draw(st.lists(st.booleans(), min_size=len(conn.driver.queue), max_size=len(conn.driver.queue)))
        conn.driver.queue = [i for i, drop in zip(conn.driver.queue, lost, strict=True)
                             if not (drop and type(i) is Frame)]
        for c in conn.channels:
            conn.driver.queue.append(Sync(c, self.store.position(c)))

    @precondition(lambda self: bool(self.conns))
    @rule(data=st.data())
    def cut(self, data: st.DataObject) -> None:
        """Slow consumer: the hub clears the queue and ends the stream."""
        slot = data.draw(st.sampled_from(sorted(self.conns)))
        self.conns[slot].driver.queue = [OVERFLOW]

    @precondition(lambda self: bool(self.conns))
    @rule(data=st.data(), chunks=st.integers(1, 4))
    def pump(self, data: st.DataObject, chunks: int) -> None:
        slot = data.draw(st.sampled_from(sorted(self.conns)))
        conn = self.conns[slot]
        for _ in range(chunks):
            if not conn.driver.chunk():
                break
            self._check(conn)
        self._forget_if_ended(slot)

    @rule()
    def settle(self) -> None:
        """Everything queued is delivered: each connection stands at the current positions."""
        for slot, conn in list(self.conns.items()):
            if not conn.synced:
                self._confirm(conn, at_first_live=False)
            while conn.driver.chunk():
                self._check(conn)
            if conn.driver.ended is None:
                # (A channel whose history was lost with no event since has nothing to deliver:
                # a stream may still stand in the lost epoch until the next event resets it.)
                current = [self.store.position(c) for c in conn.channels]
                assert all(s == p or p.epoch is None for s, p in zip(conn.seen, current, strict=True)), (
                    conn.channels, conn.seen, current)
            self._forget_if_ended(slot)

    def _forget_if_ended(self, slot: int) -> None:
        conn = self.conns[slot]
        if conn.driver.ended is not None:
            del self.conns[slot]

    # -- the checks ----------------------------------------------------------------------------

    def _check(self, conn: Connection) -> None:
        for chunk in conn.driver.chunks[conn.checked:]:
            merged: list[dict[str, str]] = []
            for block in blocks(chunk):
                if block.get("event") == "pushsvc.reset":
                    reset = json.loads(block["data"])
                    assert reset["position"] == block["id"]
                    reasons = [(reset["reason"], reset["channels"])]
                    previous = merged[-1] if merged else None
                    if previous and previous.get("event") == "pushsvc.reset" and previous["id"] == block["id"]:
                        # Resets of one moment (one per reason) share their position: check them as one.
                        reasons = json.loads(previous["data"])["reasons"] + reasons
                        merged.pop()
                    block = {**block, "data": json.dumps({"reasons": reasons})}
                merged.append(block)
            for block in merged:
                self._check_block(conn, block)
        conn.checked = len(conn.driver.chunks)

    def _check_block(self, conn: Connection, block: dict[str, str]) -> None:
        if "id" not in block:
            assert "data" not in block or block.get("event") == "pushsvc.token_expired", block
            return
        new = parse_stream_id(block["id"], len(conn.channels))
        assert new is not None, block
        self.last_ids[conn.channels].append(block["id"])
        event = block.get("event")
        moved_by_event: int | None = None
        reset_channels: set[int] = set()
        if event == "pushsvc.reset":
            reset = json.loads(block["data"])
            for reason, channels in reset["reasons"]:
                for c in channels:
                    i = conn.channels.index(c)
                    reset_channels.add(i)
                    self._check_reset_reason(conn, i, reason, new[i])
        elif "data" in block:
            name = block["data"]
            assert name not in conn.delivered, f"{name} delivered twice"
            conn.delivered.add(name)
            ways = [i for i, c in enumerate(conn.channels) if self.copies[name].get(c) == new[i]]
            assert ways, f"{name} does not carry its own position"
            moving = [i for i in ways if new[i] != conn.seen[i]]
            assert moving, f"{name} moved no channel: it was sent already"
            moved_by_event = moving[0]
        for i, (old, now) in enumerate(zip(conn.seen, new, strict=True)):
            if i in reset_channels or old is None or old == now:
                continue
            if conn.fresh and old.epoch is None and i not in conn.stated:
                continue  # a fresh stream's first position on a channel is its sync position
            # Every position passed over is an event this connection received (this one, or
            # one whose copy on another channel it received before): no silent gap.
            assert now.epoch == old.epoch or old.epoch is None, (conn.channels[i], old, now)
            first = 1 if old.epoch is None else old.seq + 1
            for seq in range(first, now.seq + 1):
                passed = self.by_position.get((conn.channels[i], Position(now.epoch, seq)))
                assert passed in conn.delivered, f"{conn.channels[i]}-{seq} passed over without being delivered"
        conn.stated |= reset_channels | ({moved_by_event} if moved_by_event is not None else set())
        conn.seen = list(new)

    def _check_reset_reason(self, conn: Connection, i: int, reason: str, position: Position) -> None:
        channel = conn.channels[i]
        old = conn.seen[i]
        ch = self.store.channel(channel)
        # It continues from a position the channel has reached (where live delivery resumed;
        # decided when its cause was seen, so possibly in an epoch lost since).
        assert position.epoch is None or position.seq <= self.reached.get((channel, position.epoch), -1), position
        first = ch.entries[0][0] if ch.entries else None
        if reason == "unreadable_id":
            assert conn.garbled or (old is not None and old.epoch == ch.epoch and old.seq > ch.seq)
        elif reason == "history_lost":
            # (The stream may have stood in the lost epoch without stating it yet: a copy of an
            # event it had received through another channel moved it there silently.)
            assert old is None or old.epoch is None or old.epoch != ch.epoch
        else:
            # A fresh stream may not have stated its opening position yet: it still has one
            # (its sync position), and an event published after it that history no longer
            # holds is honestly "too old" for it.
            assert reason == "too_old" and (old is not None or conn.fresh)
            if old is not None:  # (a fresh stream's unstated position is not in `seen`)
                assert old.epoch is None or old.epoch == ch.epoch
                assert first is None or first > old.seq + 1

    @invariant()
    def queues_stay_bounded_by_the_model(self) -> None:
        for conn in self.conns.values():
            cursor = conn.driver.cursor
            assert cursor.held is None or len(cursor.held) <= cursor.max_items


TestCursorModel = CursorModel.TestCase
TestCursorModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None, report_multiple_bugs=False,
                                    suppress_health_check=[HealthCheck.too_slow])
