"""The stream cursor alone (pushsvc/cursor.py): no broker, no hub, no event loop.

A `Store` plays the broker's history and a `Driver` plays `StreamSession`; what the
cursor sends is parsed with the WHATWG rules, as a browser would see it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pushsvc.cursor as cursor_module
from pushsvc.cursor import CLOSE, EXPIRED, OVERFLOW, PING, RECENT_EIDS, End, ReadHistory, Sync
from pushsvc.events import Frame, parse_message
from pushsvc.metrics import Metrics
from pushsvc.resume import EMPTY, Position, parse_stream_id
from tests.support.cursor_driver import Driver, Store, parse_with_eids


@pytest.fixture(autouse=True)
def history_frames_carry_eids(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(cursor_module, "parse_message", parse_with_eids)
    yield


def datas(driver: Driver) -> list[str]:
    return [e.data for e in driver.events if e.type == "message"]


def resets(driver: Driver) -> list[dict[str, object]]:
    return [json.loads(e.data) for e in driver.events if e.type == "pushsvc.reset"]


def publish_n(store: Store, channel: str, n: int, start: int = 0) -> list:
    return [store.publish(channel, f"e{start + k}") for k in range(n)]


# -- fresh streams and the hot path ------------------------------------------------------


def test_a_fresh_stream_states_its_position_at_sync_then_takes_live_frames_as_they_are():
    store = Store()
    publish_n(store, "news", 3)
    d = Driver.open(store, ("news",))
    d.sync("news")
    d.drain()
    assert d.last_id == store.position("news").format() and not d.events
    frames = publish_n(store, "news", 2, start=3)
    chunk = d.cursor.take_live(frames)
    assert chunk == frames[0].single + frames[1].single
    assert d.cursor.position(0) == store.position("news")


def synced(store: Store, channel: str = "news") -> Driver:
    """A one-channel stream synced at the channel's current position, nothing pending."""
    d = Driver.open(store, (channel,))
    d.sync(channel)
    d.drain()
    return d


def test_a_run_checked_by_the_channel_log_is_taken_only_when_it_is_exactly_what_comes_next():
    store = Store()
    publish_n(store, "news", 3)
    d = synced(store)
    first, second, third = publish_n(store, "news", 3, start=3)
    assert not d.cursor.take_run(second, third, 2)  # a gap
    assert not synced(store).cursor.take_run(first, third, 3)  # synced after all six: first is old
    assert not Driver.open(Store(), ("news",)).cursor.take_run(first, third, 3)  # not synced yet
    assert not Driver.open(store, ("a", "news")).cursor.take_run(first, third, 3)  # multi-channel


def test_a_run_taken_advances_the_position_as_its_frames_would():
    store = Store()
    publish_n(store, "news", 3)
    d = synced(store)
    before = d.cursor.delivered
    first, _, third = publish_n(store, "news", 3, start=3)
    assert d.cursor.take_run(first, third, 3)
    assert d.cursor.position(0) == store.position("news") and d.cursor.delivered == before + 3


def test_the_hot_path_declines_a_gap_a_control_or_a_multi_channel_stream():
    store = Store()
    d = Driver.open(store, ("news",))
    d.sync("news")
    d.drain()
    first, _, third = publish_n(store, "news", 3)
    assert d.cursor.take_live([third]) is None  # a gap
    assert d.cursor.take_live([first, PING]) is None  # a control
    multi = Driver.open(store, ("a", "news"))
    assert multi.cursor.take_live([first]) is None


def test_a_stream_opened_before_its_channel_has_events_gets_the_first_one_of_the_new_epoch():
    store = Store()
    d = Driver.open(store, ("new",))
    d.sync("new")
    d.drain()
    assert d.last_id == "0"
    d.queue.append(store.publish("new", "first"))
    d.drain()
    assert datas(d) == ["first"] and d.last_id.endswith("-1")


# -- resume and catch-up ------------------------------------------------------------------


def test_resume_replays_exactly_what_was_missed_then_drops_live_duplicates():
    store = Store()
    ids = publish_n(store, "news", 5)
    d = Driver.open(store, ("news",), resume=[Position(ids[1].epoch, 2)])
    d.sync("news")
    live = store.publish("news", "e5")
    d.queue += [ids[4], live]  # the last replayed event also arrives live
    d.drain()
    assert datas(d) == ["e2", "e3", "e4", "e5"]
    assert [e.last_event_id for e in d.events][-1] == live.single.split(b"\n")[0][4:].decode()


def test_a_gap_in_live_frames_reads_history_up_to_the_frame_then_sends_it():
    store = Store()
    d = Driver.open(store, ("news",))
    d.sync("news")
    d.drain()
    lost = publish_n(store, "news", 3)
    d.queue.append(lost[2])
    step = d.cursor.feed(d.queue.pop(), [])
    assert step == ReadHistory("news", 0, Position(lost[2].epoch, 2), cursor_module.FIRST_PAGE)
    d.cursor.catching = None
    d.queue.append(lost[2])
    d.drain()
    assert datas(d) == ["e0", "e1", "e2"]


def test_replay_goes_in_pages_of_about_one_chunk_and_asks_for_the_next_page_only_after_a_chunk():
    store = Store()
    big = "x" * 10_000
    epoch_frames = [store.publish("big", f"{n}:{big}") for n in range(100)]
    d = Driver.open(store, ("big",), resume=[Position(epoch_frames[0].epoch, 0)], chunk_bytes=64 * 1024)
    d.sync("big")
    reads = []
    while d.chunk():
        reads.append(store.reads)
        assert len(d.chunks[-1]) <= 64 * 1024 + 10_100  # at most one event beyond the chunk size
    assert [e.data.split(":")[0] for e in d.events] == [str(n) for n in range(100)]
    assert reads == sorted(reads) and max(b - a for a, b in itertools.pairwise(reads)) <= 1
    assert store.reads >= 100 * 10_000 // (64 * 1024)  # paged, never one whole read


def test_live_frames_wait_in_the_queue_during_a_catch_up():
    store = Store()
    publish_n(store, "news", 50)
    d = Driver.open(store, ("news",), resume=[Position(store.channel("news").epoch, 0)], chunk_bytes=64)
    d.sync("news")
    live = store.publish("news", "e50")
    d.queue.append(live)
    d.chunk()
    assert d.cursor.reading is not None and d.queue[-1] is live  # untouched while replaying
    d.drain()
    assert datas(d) == [f"e{n}" for n in range(51)]


def test_an_id_older_than_history_gets_a_too_old_reset_with_its_position_then_live():
    store = Store(cap=10)
    frames = publish_n(store, "capped", 30)
    d = Driver.open(store, ("capped",), resume=[Position(frames[0].epoch, 3)])
    d.sync("capped")
    d.drain()
    (reset,) = resets(d)
    assert reset == {"reason": "too_old", "channels": ["capped"], "position": f"{frames[0].epoch}-30"}
    d.queue.append(store.publish("capped", "live"))
    d.drain()
    assert datas(d) == ["live"]


def test_an_id_beyond_the_channel_sequence_gets_unreadable_id_then_every_live_event():
    store = Store()
    frames = publish_n(store, "news", 5)
    d = Driver.open(store, ("news",), resume=[Position(frames[0].epoch, 999_999_999_999_999_999)])
    d.sync("news")
    d.drain()
    assert resets(d) == [{"reason": "unreadable_id", "channels": ["news"], "position": f"{frames[0].epoch}-5"}]
    d.queue += [store.publish("news", "a"), store.publish("news", "b")]
    d.drain()
    assert datas(d) == ["a", "b"]


def test_an_id_just_ahead_of_the_hubs_sync_position_is_no_reset():
    store = Store()
    frames = publish_n(store, "news", 5)
    d = Driver.open(store, ("news",), resume=[Position(frames[0].epoch, 5)])
    d.queue.append(Sync("news", Position(frames[0].epoch, 3)))  # the hub saw 4 arrive live
    d.queue += frames[3:]
    d.drain()
    assert not resets(d) and not datas(d)
    d.queue.append(store.publish("news", "next"))
    d.drain()
    assert datas(d) == ["next"]


def test_lost_history_gets_history_lost_and_the_new_epoch_live():
    store = Store()
    old = publish_n(store, "news", 3)
    store.lose("news")
    new = publish_n(store, "news", 2)
    d = Driver.open(store, ("news",), resume=[Position(old[0].epoch, 3)])
    d.sync("news")
    d.drain()
    assert resets(d) == [{"reason": "history_lost", "channels": ["news"], "position": f"{new[0].epoch}-2"}]
    d.queue.append(store.publish("news", "after"))
    d.drain()
    assert datas(d) == ["after"]


def test_a_garbled_id_resets_every_channel_once_with_the_whole_stream_position():
    store = Store()
    publish_n(store, "a", 2)
    d = Driver.open(store, ("a", "b"), unreadable=True)
    d.sync("a")
    d.sync("b")
    d.drain()
    (reset,) = resets(d)
    assert reset["reason"] == "unreadable_id" and reset["channels"] == ["a", "b"]
    assert reset["position"] == d.last_id == f"{store.position('a').format()}.0"


def test_channels_with_different_reasons_get_one_reset_each_naming_its_position():
    store = Store(cap=2)
    a = publish_n(store, "a", 5)
    b = publish_n(store, "b", 1)
    store.lose("b")
    publish_n(store, "b", 1)
    d = Driver.open(store, ("a", "b"), resume=[Position(a[0].epoch, 1), Position(b[0].epoch, 1)])
    d.sync("a")
    d.sync("b")
    d.drain()
    got = [e for e in d.events if e.type == "pushsvc.reset"]
    assert sorted(json.loads(e.data)["reason"] for e in got) == ["history_lost", "too_old"]
    assert all(json.loads(e.data)["position"] == e.last_event_id for e in got)
    assert parse_stream_id(d.last_id, 2) == [store.position("a"), store.position("b")]


# -- one event, one delivery ----------------------------------------------------------------


def test_an_event_on_two_channels_is_sent_once_live_and_the_copy_only_moves_the_position():
    store = Store()
    d = Driver.open(store, ("a", "b"))
    d.sync("a")
    d.sync("b")
    d.drain()
    on_a = store.publish("a", "both", eid="E1")
    d.queue.append(on_a)
    d.drain()
    assert datas(d) == ["both"]
    assert parse_stream_id(d.last_id, 2)[1] == EMPTY  # b not advanced before its copy arrives
    d.queue.append(store.publish("b", "both", eid="E1"))
    d.drain()
    assert datas(d) == ["both"]
    assert parse_stream_id(d.last_id, 2) == [store.position("a"), store.position("b")]


def test_an_older_event_of_the_other_channel_is_not_skipped_by_a_shared_copy():
    store = Store()
    d = Driver.open(store, ("a", "b"))
    d.sync("a")
    d.sync("b")
    d.drain()
    only_b = store.publish("b", "b-only")
    both_a = store.publish("a", "both", eid="E2")
    both_b = store.publish("b", "both", eid="E2")
    d.queue += [both_a, only_b, both_b]
    d.drain()
    assert datas(d) == ["both", "b-only"]


def test_an_event_on_two_channels_is_replayed_once():
    store = Store()
    d0 = Driver.open(store, ("a", "b"))
    d0.sync("a")
    d0.sync("b")
    d0.drain()
    for n in range(5):
        store.publish("a", f"x{n}", eid=f"X{n}")
        store.publish("b", f"x{n}", eid=f"X{n}")
    store.publish("b", "b-only")
    d = Driver.open(store, ("a", "b"), resume=parse_stream_id(d0.last_id, 2))
    d.sync("a")
    d.sync("b")
    d.drain()
    assert datas(d) == [f"x{n}" for n in range(5)] + ["b-only"]
    assert parse_stream_id(d.last_id, 2) == [store.position("a"), store.position("b")]


def test_the_memory_of_sent_events_is_bounded():
    store = Store()
    d = Driver.open(store, ("a", "b"))
    d.sync("a")
    d.sync("b")
    d.drain()
    for n in range(RECENT_EIDS + 50):
        d.queue.append(store.publish("a", "x", eid=f"E{n}"))
    d.drain()
    assert d.cursor.recent is not None and len(d.cursor.recent) == RECENT_EIDS


# -- the stream's end -----------------------------------------------------------------------


@pytest.mark.parametrize(("control", "reason"), [(CLOSE, "shutdown"), (OVERFLOW, "slow_consumer"),
                                                 (EXPIRED, "token_expired")])
def test_controls_end_the_stream_with_their_reason(control, reason):
    d = Driver.open(Store(), ("news",))
    d.queue.append(control)
    d.drain()
    assert d.ended is not None and d.ended.reason == reason


def test_a_ping_is_sent_only_in_an_otherwise_empty_chunk():
    d = Driver.open(Store(), ("news",))
    out: list[bytes | memoryview] = []
    assert d.cursor.on_control(PING, out) is None and out == [b": ping\n\n"]
    assert d.cursor.on_control(PING, out) is None and len(out) == 1


def test_frames_of_a_channel_not_synced_are_held_bounded():
    store = Store()
    d = Driver.open(store, ("news",), max_items=3)
    d.queue += publish_n(store, "news", 4)
    d.drain()
    assert d.ended is not None and d.ended.reason == "catch_up_failed"


def test_held_frames_are_sent_after_the_sync_from_its_position():
    store = Store()
    publish_n(store, "news", 2)
    d = Driver.open(store, ("news",))
    early = store.publish("news", "e2")
    d.queue.append(early)
    d.queue.append(Sync("news", Position(early.epoch, 2)))  # the hub saw e2 arrive live first
    d.drain()
    assert datas(d) == ["e2"]


def test_a_failed_history_read_ends_the_stream_to_be_resumed():
    store = Store()
    publish_n(store, "news", 3)
    d = Driver.open(store, ("news",), resume=[Position(store.channel("news").epoch, 1)])
    step = d.cursor.feed(Sync("news", store.position("news")), [])
    assert isinstance(step, ReadHistory)
    end = d.cursor.read_failed()
    assert isinstance(end, End) and end.reason == "catch_up_failed" and d.cursor.reading is None


def test_replayed_and_reset_counts_reach_the_metrics():
    store = Store(cap=3)
    frames = publish_n(store, "a", 5)
    metrics = Metrics()
    d = Driver.open(store, ("a",), resume=[Position(frames[0].epoch, 2)], metrics=metrics)
    d.sync("a")
    d.drain()
    assert (metrics.events_replayed, metrics.resets_sent) == (3, 0)
    Driver.open(store, ("a",), resume=[Position(frames[0].epoch, 0)], metrics=metrics)
    d2 = Driver.open(store, ("a",), resume=[Position(frames[0].epoch, 1)], metrics=metrics)
    d2.sync("a")
    d2.drain()
    assert metrics.resets_sent == 1


def test_a_shared_page_that_starts_before_the_position_resends_nothing():
    """The hub serves several streams one read: a page may start before this stream's position."""
    store = Store()
    frames = publish_n(store, "news", 6)
    d = Driver.open(store, ("news",), resume=[Position(frames[0].epoch, 3)])
    step = d.cursor.feed(Sync("news", store.position("news")), [])
    assert isinstance(step, ReadHistory) and step.after_seq == 3
    out: list[bytes | memoryview] = []
    assert d.cursor.on_history(store.history("news", 0, None), out, 1 << 20) is None  # read for another stream
    assert b"".join(out).count(b"data: ") == 3 and b"data: e3" in b"".join(out) and b"data: e2" not in b"".join(out)


# -- the hot path's check against the plain loop it replaced ---------------------------------


def _old_take_live(epoch: str | None, seq: int, items: list) -> tuple[int, bytes] | None:
    for item in items:
        if type(item) is not Frame:
            return None
        if item.epoch is None:
            continue
        if item.epoch != epoch or item.seq != seq + 1:
            return None
        seq = item.seq
    return seq, b"".join(bytes(item.single) for item in items)


def _frame(kind: tuple[str, str, int]) -> object:
    what, epoch, seq = kind
    if what == "ping":
        return PING
    if what == "foreign":
        return parse_message("news", b'{"data":"raw"}', False)
    return parse_message("news", b'{"data":"e","pushsvc":[%d,"%s"]}' % (seq, epoch.encode()))


@settings(max_examples=400, deadline=None)
@given(
    published=st.integers(0, 3),
    kinds=st.lists(st.tuples(st.sampled_from(["frame", "frame", "frame", "foreign", "ping"]),
                             st.sampled_from(["same", "same", "epochb02"]), st.integers(1, 7)), min_size=1, max_size=8),
    run=st.booleans(),
)
def test_the_hot_path_takes_exactly_what_the_plain_loop_took(published: int, kinds: list, run: bool):
    store = Store()
    publish_n(store, "news", published)
    d = Driver.open(store, ("news",))
    d.sync("news")
    d.drain()
    epoch, seq = d.cursor.epochs[0], d.cursor.seqs[0]
    kinds = [(k, (epoch or "epocha01") if e == "same" else e, s) for k, e, s in kinds]
    if run:  # the next sequences, as live delivery has them (of this epoch or, sometimes, another)
        kinds = [(k, e, seq + 1 + i) for i, (k, e, s) in enumerate(kinds)]
    items = [_frame(k) for k in kinds]
    want = _old_take_live(epoch, seq, items)
    got = d.cursor.take_live(items)
    if want is None:
        assert got is None and (d.cursor.epochs[0], d.cursor.seqs[0]) == (epoch, seq)
    else:
        assert got is not None and bytes(got) == want[1] and d.cursor.seqs[0] == want[0]
