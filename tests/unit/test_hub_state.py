"""The hub's per-channel state machine (pushsvc/hub_state.py) alone, then the hub's resync
with a broker whose position read the test holds back (no network)."""

from __future__ import annotations

import asyncio
import itertools
import re

import pytest

from pushsvc.broker.memory import MemoryBroker
from pushsvc.events import Event
from pushsvc.hub import Hub
from pushsvc.hub_state import TRANSITIONS, ChannelSync, Happened, IllegalTransition, State
from pushsvc.metrics import Metrics
from pushsvc.resume import EMPTY, Position
from pushsvc.session import StreamSession

E = "abcdefgh"


def test_every_state_and_happening_pair_is_either_in_the_table_or_refused():
    for state, happened in itertools.product(State, Happened):
        sync = ChannelSync()
        sync.state = state
        if (state, happened) in TRANSITIONS:
            assert sync.transition(happened) is TRANSITIONS[state, happened]
        else:
            with pytest.raises(IllegalTransition):
                sync.transition(happened)


def test_a_channel_is_synced_only_once_a_pass_decided_its_position():
    sync = ChannelSync()
    assert not sync.synced
    assert sync.confirmed()  # start a pass
    assert sync.state is State.SYNCING and not sync.synced
    assert sync.decide(Position(E, 4)) == (Position(E, 4), False)
    assert sync.state is State.SYNCED and sync.synced and sync.position == Position(E, 4)


def test_a_confirmation_during_a_pass_asks_for_one_more_pass_and_starts_no_second_task():
    sync = ChannelSync()
    assert sync.confirmed()
    assert not sync.confirmed()
    assert not sync.confirmed()
    assert sync.state is State.SYNCING_AGAIN
    _, again = sync.decide(Position(E, 1))
    assert again and sync.state is State.RESYNCING and sync.synced
    _, again = sync.decide(Position(E, 1))
    assert not again and sync.state is State.SYNCED


def test_a_restarted_pass_covers_the_confirmations_before_it():
    sync = ChannelSync()
    sync.confirmed()
    sync.confirmed()
    sync.restart()
    assert sync.state is State.SYNCING


def test_an_idle_channel_cannot_decide_or_restart():
    sync = ChannelSync()
    with pytest.raises(IllegalTransition):
        sync.decide(EMPTY)
    with pytest.raises(IllegalTransition):
        sync.restart()


def test_the_first_live_frame_of_a_pass_decides_the_sync_position():
    sync = ChannelSync()
    sync.confirmed()
    sync.live(Position(E, 6))
    sync.live(Position(E, 7))
    assert sync.decide(Position(E, 7)) == (Position(E, 5), False)
    assert sync.position == Position(E, 7)  # the latest seen stays the channel's position


def test_a_live_frame_beyond_the_read_or_of_another_epoch_does_not_move_the_sync_position():
    sync = ChannelSync()
    sync.confirmed()
    sync.live(Position(E, 9))
    assert sync.decide(Position(E, 8))[0] == Position(E, 8)
    sync.confirmed()
    sync.live(Position("zzzzzzzz", 1))
    assert sync.decide(Position(E, 8))[0] == Position(E, 8)


def test_live_frames_outside_a_pass_only_move_the_position():
    sync = ChannelSync()
    sync.confirmed()
    sync.decide(Position(E, 1))
    sync.live(Position(E, 2))
    assert sync.first_live is None and sync.position == Position(E, 2)


class HeldPositionBroker(MemoryBroker):
    """The embedded broker, but a position read waits until the test lets it answer."""

    def __init__(self, **options: int) -> None:
        super().__init__(**options)
        self.reading = asyncio.Event()
        self.answer = asyncio.Event()

    async def position(self, channel: str) -> Position:
        self.reading.set()
        await asyncio.wait_for(self.answer.wait(), 5)
        return await super().position(channel)


async def test_a_stream_resuming_where_live_delivery_starts_needs_no_history_during_a_resync():
    """With no history kept, a stream whose position is just before the first live frame of
    the resync must get every live event and no reset: the sync position comes from that
    first live frame, not from the (later) position read."""
    broker = HeldPositionBroker(history_size=0)
    hub = Hub(broker, Metrics())
    await hub.start()
    try:
        ids = (await broker.publish([Event(("news",), n) for n in range(5)])).ids
        last = ids[-1][0]
        epoch, seq = last.split("-")
        session = StreamSession(hub, hub.metrics, ("news",), [Position(epoch, int(seq))], False, 3000, 100, 1 << 20)
        session.start()
        try:
            await asyncio.wait_for(broker.reading.wait(), 5)  # subscribed and confirmed: a pass runs
            await broker.publish([Event(("news",), n) for n in range(5, 8)])  # live before the read
            broker.answer.set()
            body = b""
            chunk, done = await session.first_chunk()
            body += chunk
            while b"data: 7" not in body and not done:
                more, done = await asyncio.wait_for(session.next_chunk(), 5)
                body += more or b""
        finally:
            session.stop()
        assert b"pushsvc.reset" not in body
        assert re.findall(rb"data: (\d)", body) == [b"5", b"6", b"7"]
    finally:
        await hub.stop()
