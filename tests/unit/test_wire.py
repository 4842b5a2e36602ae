"""The wire format (pushsvc.wire) and the parsing of received messages: one module formats
and parses ids, positions and the envelope; only trusted messages carry a position."""

from __future__ import annotations

import pytest

from pushsvc import wire
from pushsvc.broker.scripts import PUBLISH_LUA
from pushsvc.events import EventError, parse_message


def test_a_sealed_message_is_parsed_back_to_its_position():
    frame = parse_message("news", wire.seal(wire.message_prefix({"a": 1}, "t", None), 42, "abcd1234"))
    assert (frame.epoch, frame.seq, frame.eid) == ("abcd1234", 42, None)
    assert frame.single.startswith(b"id: abcd1234-42\n")


def test_a_multi_channel_copy_carries_its_event_identity():
    payload = wire.seal(wire.message_prefix(1, None, None), 3, "abcd1234", "k3j9x2ab7q1m")
    assert payload.endswith(b',"pushsvc":[3,"abcd1234","k3j9x2ab7q1m"]}')
    frame = parse_message("a", payload)
    assert (frame.seq, frame.eid) == (3, "k3j9x2ab7q1m")


@pytest.mark.parametrize("member", [
    '[3,"abcd1234","Not-An-Eid!"]', '[3,"abcd1234",7]', '[3,"abcd1234","x","y"]', '[0,"abcd1234"]',
    '[3,"ABCD"]', '[true,"abcd1234"]', '"3-abcd1234"',
])
def test_a_malformed_trusted_position_is_an_invalid_message(member):
    with pytest.raises(EventError) as caught:
        parse_message("a", b'{"data":1,"pushsvc":' + member.encode() + b"}")
    assert caught.value.code == "invalid_message"


def test_an_untrusted_message_never_gets_a_position_whatever_it_carries():
    payload = b'{"data":"forged","pushsvc":[5,"abcd1234","k3j9x2ab"],"id":"abcd1234-5"}'
    frame = parse_message("a", payload, trusted=False)
    assert (frame.epoch, frame.seq, frame.eid) == (None, 0, None)
    assert b"id:" not in frame.single


def test_a_reserved_type_in_a_raw_message_is_invalid():
    with pytest.raises(EventError):
        parse_message("a", b'{"data":1,"type":"pushsvc.reset"}', trusted=False)


def test_stream_ids_round_trip_and_garbage_is_unreadable():
    positions = [wire.Position("abcd1234", 42), wire.EMPTY, wire.Position("zzzz9999", 1)]
    text = wire.format_stream_id(positions)
    assert text == "abcd1234-42.0.zzzz9999-1"
    assert wire.parse_stream_id(text, 3) == positions
    assert wire.parse_stream_id(text, 2) is None
    assert wire.parse_stream_id("abcd1234-x", 1) is None


def test_resume_keeps_its_public_names():
    from pushsvc import resume

    assert resume.Position is wire.Position and resume.EMPTY is wire.EMPTY
    assert resume.parse_stream_id is wire.parse_stream_id
    assert resume.format_stream_id is wire.format_stream_id


def test_names_share_the_channel_hash_tag_and_live_names_map_back():
    names = [wire.meta_key("user:42"), wire.history_key("user:42"), wire.live_channel("user:42"),
             wire.idempotency_key("user:42", "t:ab", "k1")]
    assert all(name.startswith("pushsvc:{user:42}:") for name in names)
    assert wire.channel_of_live(wire.live_channel("user:42")) == "user:42"
    assert wire.channel_of_live("user:42") is None
    assert wire.channel_of_live(wire.CONTROL_CHANNEL) is None


def test_the_lua_script_builds_the_envelope_from_the_wire_module():
    assert wire.lua_seal("prefix", "seq", "epoch", "eid") in PUBLISH_LUA
    assert wire.lua_position("seq", "epoch") in PUBLISH_LUA
