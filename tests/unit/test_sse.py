"""The SSE encoder against a parser written to the WHATWG rules."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushsvc import sse
from pushsvc.events import EventError, check_event_type, dumps, parse_message, seal, wire_prefix
from tests.support.whatwg import Parser

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
# Text a browser can receive: no lone surrogates (not encodable as UTF-8).
texts = st.text(st.characters(blacklist_categories=("Cs",)))


def through_browser(frame: bytes, chunk: int | None = None) -> list:
    parser = Parser()
    if chunk is None:
        return parser.feed(frame)
    events = []
    for i in range(0, len(frame), chunk):
        events += parser.feed(frame[i:i + chunk])
    return events


def frame_for(data, type_=None, epoch="abcd1234", seq=7):
    return parse_message("ch", seal(wire_prefix(data, type_, None), seq, epoch))


@given(json_values.filter(lambda v: not isinstance(v, str)))
def test_any_non_string_json_data_round_trips_through_json_parse(value):
    (event,) = through_browser(frame_for(value).single)
    assert json.loads(event.data) == value
    assert event.type == "message"
    assert event.last_event_id == "abcd1234-7"


@given(texts)
def test_any_string_round_trips_up_to_newline_normalisation(text):
    (event,) = through_browser(frame_for(text).single)
    assert event.data == text.replace("\r\n", "\n").replace("\r", "\n")


@given(texts, st.integers(1, 7))
def test_strings_survive_arbitrary_chunking(text, chunk):
    (event,) = through_browser(frame_for(text, "t").single, chunk)
    assert event.data == text.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize("text", ["", "\n", "a\n", "\n\n", "\r\n", "\r", "é ü 中文 🎉", " leading space"])
def test_edge_strings(text):
    (event,) = through_browser(frame_for(text).single)
    assert event.data == text.replace("\r\n", "\n").replace("\r", "\n")


@settings(max_examples=20, deadline=None)  # 64 KiB per example: a loaded CI machine must not fail it on time
@given(texts.filter(bool))
def test_64_kib_strings_round_trip(piece):
    text = (piece * (65536 // len(piece) + 1))[:65536]
    (event,) = through_browser(frame_for(text).single)
    assert event.data == text.replace("\r\n", "\n").replace("\r", "\n")


@given(st.text())
def test_no_event_type_can_inject_a_field(candidate):
    try:
        accepted = check_event_type(candidate)
    except EventError:
        return
    assert accepted is not None
    events = through_browser(frame_for("x", accepted).single)
    assert [(e.type, e.data) for e in events] == [(accepted, "x")]


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "x\n\ndata: injected", "a\0b", "a b", "", "x" * 101])
def test_event_types_with_newlines_or_unsafe_characters_are_refused(bad):
    with pytest.raises(EventError):
        check_event_type(bad)


def test_id_line_refuses_newlines():
    with pytest.raises(ValueError):
        sse.id_line("a\nretry: 1")


def test_id_only_frame_sets_last_event_id_without_dispatching():
    parser = Parser()
    assert parser.feed(sse.id_only("e1-3")) == []
    assert parser.last_event_id == "e1-3"


def test_retry_and_comment_frames():
    parser = Parser()
    assert parser.feed(sse.retry(2500) + sse.comment("hello\nworld")) == []
    assert parser.retry == 2500
    assert parser.comments == ["hello world"]


def test_compact_json_is_used_for_structured_data():
    assert dumps({"a": [1, 2], "b": "é"}) == '{"a":[1,2],"b":"é"}'
