"""`parse_message`'s fast path (the decoder's scanner at once, one-line events, epochs seen
before) gives exactly what the plain path gives: the frame, or the same error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushsvc import sse, wire
from pushsvc.events import EventError, Frame, check_event_type, check_retry, dumps, loads, parse_message


def reference(channel: str, payload: Any, trusted: bool) -> Frame:
    """parse_message before the fast path (main at f46a05f), kept as the oracle."""
    try:
        obj = loads(payload)
    except (ValueError, RecursionError):
        raise EventError("invalid_message", "message is not JSON") from None
    if not isinstance(obj, dict) or "data" not in obj:
        raise EventError("invalid_message", "message is not a JSON object with 'data'")
    type_ = check_event_type(obj.get("type"))
    retry = check_retry(obj.get("retry"))
    data = obj["data"]
    try:
        lines = []
        if type_ is not None:
            lines.append(f"event: {type_}\n")
        if retry is not None:
            lines.append(f"retry: {int(retry)}\n")
        for line in sse._NEWLINE.split(data if isinstance(data, str) else dumps(data)):
            lines.append(f"data: {line}\n")
        lines.append("\n")
        body = "".join(lines).encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        raise EventError("invalid_message", "message data cannot be encoded") from None
    member = obj.get(wire.ENVELOPE_MEMBER) if trusted else None
    if member is None:
        return Frame(channel, None, 0, body, body)
    m = member
    if (not isinstance(m, list) or len(m) not in (2, 3) or isinstance(m[0], bool) or not isinstance(m[0], int)
            or m[0] < 1 or not isinstance(m[1], str) or wire.EPOCH_RE.fullmatch(m[1]) is None):
        raise EventError("invalid_message", "message has a malformed pushsvc position")
    eid = None
    if len(m) == 3:
        if not isinstance(m[2], str) or wire.EID_RE.fullmatch(m[2]) is None:
            raise EventError("invalid_message", "message has a malformed pushsvc event identity")
        eid = m[2]
    line = wire.id_line(m[1], m[0])
    return Frame(channel, m[1], m[0], (line + body)[len(line):], line + body, eid)


def outcome(parse: Any, payload: Any, trusted: bool) -> tuple[Any, ...]:
    try:
        f = parse("ch", payload, trusted)
    except EventError as exc:
        return ("error", exc.code, exc.detail)
    return (f.channel, f.epoch, f.seq, bytes(f.body), f.single, f.eid)


EDGES: list[Any] = [
    b'{"data":"a","pushsvc":[3,"abcd1234"]}',
    b' {"data":"a","pushsvc":[3,"abcd1234"]}',
    b'{"data":"a","pushsvc":[3,"abcd1234"]} \n',
    b'{"data":"a"}{"data":"b"}',
    b'{"data":"a"} x',
    '\ufeff{"data":"a"}'.encode(),
    b'{"data":"\xff"}',
    b'{"data":NaN}',
    b'{"data":1e999}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"data":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"data":"\\ud800"}',
    b'{"data":"two\\nlines\\r\\nthree\\rfour"}',
    b'{"data":"carriage\\rreturn only"}',
    b'{"data":"a","type":"t","retry":5,"pushsvc":[1,"abcd1234","e1"]}',
    b'{"data":"a","type":"pushsvc.reset"}',
    b'{"data":"a","retry":true}',
    b'{"data":"a","pushsvc":[true,"abcd1234"]}',
    b'{"data":"a","pushsvc":[0,"abcd1234"]}',
    b'{"data":"a","pushsvc":[1.0,"abcd1234"]}',
    b'{"data":"a","pushsvc":[1,"ABCD1234"]}',
    b'{"data":"a","pushsvc":[1,"abcd1234",""]}',
    b'{"data":"a","pushsvc":[1,"abcd1234","e",4]}',
    b'{"data":"a","pushsvc":{"seq":1}}',
    b'{"data":{"x":[1,2.5,null,true]},"pushsvc":[7,"abcd1234"]}',
    b'["data"]',
    b'"data"',
    b"",
    b"   ",
    '{"data":"str payload"}',
    bytearray(b'{"data":"a","pushsvc":[3,"abcd1234"]}'),
    memoryview(b'{"data":"a","pushsvc":[3,"abcd1234"]}'),
]


@pytest.mark.parametrize("payload", EDGES, ids=range(len(EDGES)))
@pytest.mark.parametrize("trusted", [True, False])
def test_an_edge_case_is_parsed_as_before(payload: Any, trusted: bool):
    assert outcome(parse_message, payload, trusted) == outcome(reference, payload, trusted)


def test_an_epoch_seen_well_formed_does_not_let_a_bad_one_through():
    good = b'{"data":"a","pushsvc":[1,"abcd1234"]}'
    assert parse_message("ch", good).epoch == "abcd1234"
    for bad in ("abcd123", "abcd12345", "ABCD1234", "abcd-234"):
        with pytest.raises(EventError, match="malformed pushsvc position"):
            parse_message("ch", b'{"data":"a","pushsvc":[2,"%s"]}' % bad.encode())
    assert parse_message("ch", good).epoch == "abcd1234"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
members = st.one_of(
    st.tuples(st.integers(-2, 10**20), st.sampled_from(["abcd1234", "zzzzzzzz", "abc", "ABCD1234"])).map(list),
    st.tuples(st.integers(1, 9), st.just("abcd1234"), st.text(max_size=4)).map(list),
    json_values,
)


@settings(max_examples=300, deadline=None)
@given(data=json_values, extra=st.dictionaries(st.sampled_from(["type", "retry", "pushsvc", "id"]),
                                                 st.one_of(json_values, members), max_size=3),
       pad=st.sampled_from(["", " ", "\n", "x"]), trusted=st.booleans())
def test_any_message_is_parsed_as_before(data: Any, extra: dict[str, Any], pad: str, trusted: bool):
    text = json.dumps({"data": data, **extra}, ensure_ascii=False)
    for payload in (text.encode("utf-8", "surrogatepass"), (pad + text).encode("utf-8", "surrogatepass"),
                    (text + pad).encode("utf-8", "surrogatepass")):
        assert outcome(parse_message, payload, trusted) == outcome(reference, payload, trusted)
