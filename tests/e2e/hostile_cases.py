"""Hostile and malformed inputs to /stream and /publish, with what pushsvc answers.

`docs/hostile-inputs.md` is generated from this list (`python -m tests.e2e.hostile_cases`)
and a test checks it is current.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "hostile-inputs.md"


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 400
    # The JSON error code; "reset" for a 200 stream that starts with pushsvc.reset; "" for an
    # answer of the HTTP layer (Hypercorn's h11 limits) that has no JSON body.
    error: str = ""
    auth: bool = True  # send the valid publish token
    json_body: bool = True  # send Content-Type: application/json


def j(value: object) -> bytes:
    return json.dumps(value).encode()


LONG = "x" * 201
CASES = [
    # POST /publish: syntax
    Case("malformed JSON", "POST", "/publish", b'{"channel": "a", "data": ', error="invalid_json"),
    Case("empty body", "POST", "/publish", b"", error="invalid_json"),
    Case("whitespace body", "POST", "/publish", b"  \n ", error="invalid_json"),
    Case("invalid UTF-8", "POST", "/publish", b'{"data": "\xff\xfe"}', error="invalid_json"),
    Case("raw NUL byte inside a string", "POST", "/publish", b'{"data": "a\x00b"}', error="invalid_json"),
    Case("NaN", "POST", "/publish", b'{"data": NaN}', error="invalid_json"),
    Case("Infinity as 1e999", "POST", "/publish", b'{"data": 1e999}', error="invalid_json"),
    Case("integer of 5,000 digits", "POST", "/publish", b'{"data": ' + b"9" * 5000 + b"}", error="invalid_json"),
    Case("10,000 nested arrays", "POST", "/publish", b'{"data": ' + b"[" * 10000 + b"]" * 10000 + b"}",
         error="invalid_json"),
    # POST /publish: shape and fields
    Case("JSON null", "POST", "/publish", b"null", error="invalid_event"),
    Case("JSON string", "POST", "/publish", b'"hello"', error="invalid_event"),
    Case("missing data", "POST", "/publish", j({"channel": "a"}), error="invalid_event"),
    Case("unknown field", "POST", "/publish", j({"data": 1, "colour": "red"}), error="invalid_event"),
    Case("client-chosen id with CRLF", "POST", "/publish", j({"data": 1, "id": "1\r\nevent: x"}),
         error="invalid_event"),
    Case("empty batch", "POST", "/publish", b"[]", error="invalid_event"),
    Case("batch with one bad item (nothing is published)", "POST", "/publish",
         j([{"channel": "canary", "data": "must not arrive"}, {"data": 1, "type": "a\nb"}]), error="invalid_type"),
    Case("data nested 100 deep", "POST", "/publish", b'{"data": ' + b"[" * 100 + b"]" * 100 + b"}",
         error="invalid_data"),
    Case("lone surrogate in data", "POST", "/publish", b'{"data": "\\ud800"}', error="invalid_data"),
    Case("channel is a number", "POST", "/publish", j({"channel": 5, "data": 1}), error="invalid_channel"),
    Case("empty channel", "POST", "/publish", j({"channel": "", "data": 1}), error="invalid_channel"),
    Case("channel of 201 characters", "POST", "/publish", j({"channel": LONG, "data": 1}), error="invalid_channel"),
    Case("channel with CRLF", "POST", "/publish", j({"channel": "a\r\nb", "data": 1}), error="invalid_channel"),
    Case("channel with NUL", "POST", "/publish", j({"channel": "a\u0000b", "data": 1}), error="invalid_channel"),
    Case("channel with a Redis glob", "POST", "/publish", j({"channel": "orders:*", "data": 1}),
         error="invalid_channel"),
    Case("channel with brackets", "POST", "/publish", j({"channel": "a[bc]", "data": 1}), error="invalid_channel"),
    Case("reserved channel pushsvc:control", "POST", "/publish", j({"channel": "pushsvc:control", "data": 1}),
         error="invalid_channel"),
    Case("channel list of 101", "POST", "/publish", j({"channel": [f"c{i}" for i in range(101)], "data": 1}),
         error="invalid_channel"),
    Case("type with LF (field injection)", "POST", "/publish", j({"data": 1, "type": "x\ndata: injected"}),
         error="invalid_type"),
    Case("type with CR", "POST", "/publish", j({"data": 1, "type": "x\rid: 9"}), error="invalid_type"),
    Case("type with NUL", "POST", "/publish", j({"data": 1, "type": "x\u0000"}), error="invalid_type"),
    Case("type of 101 characters", "POST", "/publish", j({"data": 1, "type": "t" * 101}), error="invalid_type"),
    Case("type is an object", "POST", "/publish", j({"data": 1, "type": {"a": 1}}), error="invalid_type"),
    Case("negative retry", "POST", "/publish", j({"data": 1, "retry": -1}), error="invalid_retry"),
    Case("retry of 10^30", "POST", "/publish", b'{"data": 1, "retry": 1000000000000000000000000000000}',
         error="invalid_retry"),
    Case("retry is true", "POST", "/publish", j({"data": 1, "retry": True}), error="invalid_retry"),
    Case("retry of a day (over PUSHSVC_MAX_RETRY_MS)", "POST", "/publish", j({"data": 1, "retry": 86400000}),
         error="invalid_retry"),
    Case("reserved type pushsvc.reset", "POST", "/publish", j({"data": 1, "type": "pushsvc.reset"}),
         error="invalid_type"),
    Case("reserved type pushsvc.token_expired", "POST", "/publish",
         j({"data": 1, "type": "pushsvc.token_expired"}), error="invalid_type"),
    Case("UTF-16 body (with BOM)", "POST", "/publish", '{"data": 1}'.encode("utf-16"), error="invalid_json"),
    Case("UTF-32 body (with BOM)", "POST", "/publish", '{"data": 1}'.encode("utf-32"), error="invalid_json"),
    Case("UTF-16-LE body without BOM", "POST", "/publish", '{"data": 1}'.encode("utf-16-le"),
         error="invalid_json"),
    Case("Idempotency-Key with a space", "POST", "/publish", j({"data": 1}), headers={"Idempotency-Key": "a b"},
         error="invalid_idempotency_key"),
    Case("Idempotency-Key and idempotency_key together", "POST", "/publish",
         j({"data": 1, "idempotency_key": "e1"}), headers={"Idempotency-Key": "r1"}, error="invalid_idempotency_key"),
    Case("idempotency_key repeated in a batch", "POST", "/publish",
         j([{"data": 1, "idempotency_key": "k"}, {"data": 2, "idempotency_key": "k"}]),
         error="invalid_idempotency_key"),
    Case("idempotency_key of 201 characters", "POST", "/publish", j({"data": 1, "idempotency_key": LONG}),
         error="invalid_idempotency_key"),
    # POST /publish: limits, media type, auth, method
    Case("batch over PUSHSVC_MAX_BATCH", "POST", "/publish", j([{"data": i} for i in range(1001)]),
         status=413, error="batch_too_large"),
    Case("1,000 events x 6 channels (over 5,000 copies per request)", "POST", "/publish",
         j([{"channel": [f"c{c}" for c in range(6)], "data": i} for i in range(1000)]), status=413,
         error="batch_too_large"),
    Case("event over PUSHSVC_MAX_EVENT_BYTES", "POST", "/publish", j({"data": "x" * 300000}), status=413,
         error="event_too_large"),
    Case("body over PUSHSVC_MAX_BODY_BYTES", "POST", "/publish", j({"data": "x" * 1100000}), status=413,
         error="request_entity_too_large"),
    Case("Content-Type text/plain", "POST", "/publish", j({"data": 1}), headers={"Content-Type": "text/plain"},
         status=415, error="unsupported_media_type", json_body=False),
    Case("no Content-Type", "POST", "/publish", j({"data": 1}), status=415, error="unsupported_media_type",
         json_body=False),
    Case("form-encoded body", "POST", "/publish", b"data=1",
         headers={"Content-Type": "application/x-www-form-urlencoded"}, status=415,
         error="unsupported_media_type", json_body=False),
    Case("missing token", "POST", "/publish", j({"data": 1}), status=401, error="unauthorized", auth=False),
    Case("wrong token", "POST", "/publish", j({"data": 1}), headers={"Authorization": "Bearer nope"},
         status=401, error="unauthorized", auth=False),
    Case("Basic auth instead of Bearer", "POST", "/publish", j({"data": 1}),
         headers={"Authorization": "Basic dXNlcjpwYXNz"}, status=401, error="unauthorized", auth=False),
    Case("GET /publish", "GET", "/publish", status=405, error="method_not_allowed"),
    Case("PUT /publish", "PUT", "/publish", j({"data": 1}), status=405, error="method_not_allowed"),
    # GET /stream
    Case("empty channel", "GET", "/stream?channel=", error="invalid_channel"),
    Case("channel with a space", "GET", "/stream?channel=a%20b", error="invalid_channel"),
    Case("channel with CRLF", "GET", "/stream?channel=a%0D%0Ab", error="invalid_channel"),
    Case("channel with NUL", "GET", "/stream?channel=a%00b", error="invalid_channel"),
    Case("channel with invalid UTF-8", "GET", "/stream?channel=%FF%FE", error="invalid_channel"),
    Case("channel that is a Redis glob", "GET", "/stream?channel=*", error="invalid_channel"),
    Case("reserved channel pushsvc:control", "GET", "/stream?channel=pushsvc:control", error="invalid_channel"),
    Case("channel of 201 characters", "GET", f"/stream?channel={LONG}", error="invalid_channel"),
    Case("channel repeated 1,000 times", "GET", "/stream?" + "&".join(["channel=a"] * 1000),
         error="too_many_channels"),
    Case("channel repeated 10,000 times (a 100 KB request line)", "GET",
         "/stream?" + "&".join(["channel=a"] * 10000), status=431, error=""),
    Case("Last-Event-ID of 10,000 characters", "GET", "/stream?channel=canary2",
         headers={"Last-Event-ID": "9" * 10000}, status=200, error="reset"),
    Case("Last-Event-ID with a foreign format", "GET", "/stream?channel=canary2",
         headers={"Last-Event-ID": "1697040000000-0"}, status=200, error="reset"),
    Case("lastEventId query of garbage", "GET", "/stream?channel=canary2&lastEventId=%00%FF..--", status=200,
         error="reset"),
    Case("POST /stream", "POST", "/stream", j({}), status=405, error="method_not_allowed"),
]


def render() -> str:
    lines = [
        "# Hostile and malformed input",
        "",
        "What pushsvc answers to bad input (default limits). Every row is sent to a running service by",
        "`tests/e2e/test_hostile_input.py`, which then checks that a healthy subscriber still receives a",
        "valid event. Errors are JSON `{\"error\": <code>, \"detail\": <sentence>}`; a bad `Last-Event-ID`",
        "is not an error: the stream opens (`200`) and starts with a `pushsvc.reset` event, because a",
        "browser's `EventSource` gives up for good on any other status.",
        "",
        "| # | request | input | status | error |",
        "|---|---|---|---|---|",
    ]
    for number, case in enumerate(CASES, 1):
        error = {"reset": "`pushsvc.reset` event", "": "no body: Hypercorn's `h11_max_incomplete_size`"}.get(
            case.error, f"`{case.error}`")
        path = case.path if len(case.path) <= 40 else case.path[:37] + "..."
        lines.append(f"| {number} | `{case.method} {path.split('?')[0]}` | {case.name} | {case.status} | {error} |")
    lines += [
        "",
        "## Outside HTTP",
        "",
        "| input | what happens | test |",
        "|---|---|---|",
        "| raw Redis `PUBLISH <channel>` with a forged `\"pushsvc\": [seq, epoch]` member | delivered live "
        "**without an id**; the real event of that sequence is delivered with its id, new streams "
        "are not blacked out | `tests/integration/test_publish_guarantees.py` |",
        "| raw `PUBLISH` with a `pushsvc.*` type (e.g. a fake `pushsvc.reset`) | dropped, counted in "
        "`pushsvc_invalid_messages_total` | `tests/e2e/test_core.py` |",
        "| `Publisher.publish` with a 10 MB event, a reserved type, a day-long `retry`, 101 channels | "
        "`EventError` before anything is sent (the checks of `POST /publish`) | "
        "`tests/unit/test_publish_checks.py` |",
        "| a JWT whose `exp`, `nbf` or `iat` is a string | 401 `unauthorized` | "
        "`tests/unit/test_publish_checks.py` |",
        "| `%0a` / `%0d` in a URL path, control characters in any logged value | escaped (`\\n`) "
        "in the text log: no forged line | `tests/e2e/test_log_injection.py` |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    DOC.write_text(render())
