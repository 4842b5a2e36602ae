"""`pushsvc doctor URL`: check a deployed pushsvc through its public URL, as a browser sees it.

It opens a stream with a browser's headers (``Accept: text/event-stream``,
``Accept-Encoding: gzip, deflate, br``), publishes a probe event through the same base
URL's ``/publish`` (with ``--token``), and reports in plain words: the HTTP version and the
``retry:`` hint the client got, whether the proxy holds events back (time from publish to
receipt; if it does, a second stream without compression tells compression from plain
buffering), whether ``Last-Event-ID`` resume works through it, whether heartbeats arrive
and an idle stream survives ``--idle`` seconds, and CORS for ``--origin``.  Every problem
is one line naming the cause and the fix.  Exit status 0 only when every check passed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

BROWSER_HEADERS = {
    "Accept": "text/event-stream",
    "Accept-Encoding": "gzip, deflate, br",
    "Cache-Control": "no-cache",
    "User-Agent": "pushsvc-doctor (like a browser's EventSource)",
}
#: How long the first bytes of a stream, or a published probe, may take before the
#: proxy is said to hold the stream back.
HELD_BACK_SECONDS = 3.0
#: A probe delivered later than this after its publish counts as buffered.
PROMPT_SECONDS = 1.0
DEFAULT_IDLE_SECONDS = 70.0  # above nginx's default proxy_read_timeout (60 s)

OK, NOTE, FAIL = "ok", "note", "FAIL"
OPENED, HELD_BACK, REFUSED = "opened", "held back", "refused"


@dataclass
class Finding:
    status: str  # OK, NOTE (no effect on the exit status) or FAIL
    topic: str
    text: str

    def line(self) -> str:
        return f"  {self.status:<4}  {self.topic}: {self.text}"


@dataclass
class SSEEvent:
    type: str
    data: str
    id: str | None


class SSEReader:
    """Incremental text/event-stream parser (WHATWG rules, enough for the checks)."""

    def __init__(self) -> None:
        self._buffer = ""
        self._data: list[str] = []
        self._type = ""
        self._id: str | None = None
        self.last_id: str | None = None
        self.retry_ms: int | None = None
        self.comments: list[tuple[float, str]] = []
        self.events: list[tuple[float, SSEEvent]] = []

    def feed(self, text: str, at: float) -> None:
        self._buffer += text
        *lines, self._buffer = self._buffer.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        for line in lines:
            self._line(line, at)

    def _line(self, line: str, at: float) -> None:
        if not line:
            if self._id is not None:
                self.last_id = self._id
            if self._data:
                self.events.append((at, SSEEvent(self._type or "message", "\n".join(self._data), self.last_id)))
            self._data, self._type, self._id = [], "", None
            return
        if line.startswith(":"):
            self.comments.append((at, line[1:].strip()))
            return
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)


class Stream:
    """One open stream read by a background task; `reader` fills as bytes arrive."""

    def __init__(self, client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        self.client, self.url, self.headers = client, url, headers
        self.reader = SSEReader()
        self.response: httpx.Response | None = None
        self.opened_at = 0.0
        self.first_byte_at: float | None = None
        self.ended_at: float | None = None
        self.error: str | None = None
        self.text = ""  # the first bytes, for an answer that is not a stream
        self._headers_ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self, timeout: float) -> bool:
        """Start reading; True once the response headers are in (False: not within timeout)."""
        self.opened_at = time.monotonic()
        self._task = asyncio.create_task(self._run())
        try:
            await asyncio.wait_for(self._headers_ready.wait(), timeout)
        except TimeoutError:
            return False
        return self.response is not None

    async def _run(self) -> None:
        try:
            request = self.client.build_request("GET", self.url, headers=self.headers)
            response = await self.client.send(request, stream=True)
            self.response = response
            self._headers_ready.set()
            try:
                async for text in response.aiter_text():
                    now = time.monotonic()
                    if self.first_byte_at is None:
                        self.first_byte_at = now
                    self.reader.feed(text, now)
                    if len(self.text) < 1000:
                        self.text += text
                    self._changed.set()
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            self.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finally:
            self.ended_at = time.monotonic()
            self._headers_ready.set()
            self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Until predicate() holds (True) or the stream ended or timeout passed (False)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if self.ended_at is not None or left <= 0:
                return predicate()
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass
        return True

    def event_with(self, marker: str) -> tuple[float, SSEEvent] | None:
        return next(((at, e) for at, e in self.reader.events if marker in e.data), None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def base_url(url: str) -> str:
    """The service's base URL from what the user gave (a base, or its /stream URL)."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    path = parts.path.rstrip("/")
    if path.endswith("/stream"):
        path = path[: -len("/stream")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class Doctor:
    def __init__(self, url: str, token: str | None, idle_seconds: float, origin: str | None,
                 out: Callable[[str], None] = print) -> None:
        self.base = base_url(url)
        self.token, self.idle_seconds, self.origin, self.out = token, idle_seconds, origin, out
        self.channel = "doctor-" + secrets.token_hex(4)
        self.findings: list[Finding] = []
        self.server = ""  # the Server header: tailors the fix to nginx

    def report(self, status: str, topic: str, text: str) -> None:
        finding = Finding(status, topic, text)
        self.findings.append(finding)
        self.out(finding.line())

    def stream_url(self) -> str:
        return f"{self.base}/stream?channel={self.channel}"

    def stream_headers(self, **extra: str) -> dict[str, str]:
        headers = dict(BROWSER_HEADERS)
        if self.origin:
            headers["Origin"] = self.origin
        return headers | extra

    def fix(self, nginx: str, other: str) -> str:
        return nginx if "nginx" in self.server.lower() else other

    async def run(self) -> int:
        self.out(f"pushsvc doctor: {self.base} (probe channel {self.channel})")
        limits = httpx.Limits(max_connections=10, max_keepalive_connections=0)
        timeout = httpx.Timeout(10.0, read=None)
        async with httpx.AsyncClient(http2=_h2_available(), timeout=timeout, limits=limits,
                                     follow_redirects=True) as client:
            self.client = client
            await self.check(client)
        failed = [f for f in self.findings if f.status == FAIL]
        self.out("all well" if not failed else f"{len(failed)} problem(s) found")
        return 0 if not failed else 1

    async def check(self, client: httpx.AsyncClient) -> None:
        stream = Stream(client, self.stream_url(), self.stream_headers())
        try:
            opening = await self.check_opening(stream)
            if opening == HELD_BACK:
                await self.explain_held_back(client)
            if opening != OPENED:
                return
            self.check_cors(stream)
            first_id = await self.check_delivery(stream)
            if first_id is None:
                return
        finally:
            await stream.close()
        resumed = await self.check_resume(client, first_id)
        if resumed is not None:
            try:
                await self.check_idle(resumed)
            finally:
                await resumed.close()

    async def check_opening(self, stream: Stream) -> str:
        """Status, type, HTTP version, retry: OPENED, HELD_BACK (nothing came in time) or REFUSED."""
        await stream.open(HELD_BACK_SECONDS)
        response = stream.response
        if response is None:
            if stream.error is not None:
                self.report(FAIL, "stream", f"cannot open {self.stream_url()}: {stream.error}; check the URL "
                            "and that the proxy and pushsvc are running")
                return REFUSED
            return HELD_BACK
        self.server = response.headers.get("server", "")
        content_type = response.headers.get("content-type", "")
        if response.status_code in (401, 403) and content_type.startswith("application/json"):
            self.report(FAIL, "stream", f"{self.stream_url()} answered {response.status_code}: the probe channel "
                        f"{self.channel} is private (PUSHSVC_PRIVATE_CHANNELS), and a browser would need a subscriber "
                        "token; leave channels named doctor-* public to run these checks")
            return REFUSED
        if response.status_code != 200 or not content_type.startswith("text/event-stream"):
            detail = (await _body_excerpt(stream))
            self.report(FAIL, "stream", f"{self.stream_url()} answered {response.status_code} "
                        f"{content_type or '(no content type)'} {detail}; is this pushsvc's base URL, and does "
                        "the proxy pass /stream to it?")
            return REFUSED
        version = response.http_version
        if version == "HTTP/1.1" or version == "HTTP/1.0":
            self.report(NOTE, "HTTP version", f"{version}: browsers open at most 6 connections per origin "
                        "over HTTP/1.1, so a 7th tab's stream waits; serve HTTP/2 (TLS) at the proxy for more")
        else:
            self.report(OK, "HTTP version", version)
        if not await stream.wait_for(lambda: stream.first_byte_at is not None, HELD_BACK_SECONDS):
            return HELD_BACK
        await stream.wait_for(lambda: stream.reader.retry_ms is not None, 0.5)
        retry = stream.reader.retry_ms
        if retry is None:
            self.report(NOTE, "retry", "no retry: hint in the opening bytes; browsers reconnect after their "
                        "default (about 3 s)")
        else:
            self.report(OK, "retry", f"{retry} ms: a browser reconnects about {retry / 1000:g} s after a drop")
        encoding = response.headers.get("content-encoding")
        if encoding:
            self.report(FAIL, "compression", f"the proxy compresses the stream (Content-Encoding: {encoding}): "
                        "an event then passes only when the proxy flushes its compressor, which it may put off "
                        "until a buffer fills (events late or in bursts); " + self.compression_fix())
        return OPENED

    def compression_fix(self) -> str:
        return self.fix("turn compression off for /stream (nginx: `gzip off;` in its location, or drop "
                        "text/event-stream from gzip_types)",
                        "turn response compression off for text/event-stream at the proxy")

    async def explain_held_back(self, client: httpx.AsyncClient) -> None:
        """The browser-like stream delivered nothing: is it compression or buffering?"""
        plain = Stream(client, self.stream_url(), self.stream_headers(**{"Accept-Encoding": "identity"}))
        try:
            prompt = await plain.open(HELD_BACK_SECONDS) and await plain.wait_for(
                lambda: plain.first_byte_at is not None, HELD_BACK_SECONDS)
        finally:
            await plain.close()
        if plain.response is not None:
            self.server = plain.response.headers.get("server", "")
        held = f"nothing arrived within {HELD_BACK_SECONDS:g} s of opening the stream with a browser's headers"
        if prompt:
            self.report(FAIL, "buffering", f"{held}, while the same stream without compression "
                        "(Accept-Encoding: identity) opened at once: the proxy compresses the stream and "
                        "holds it back; " + self.compression_fix())
        else:
            self.report(FAIL, "buffering", f"{held}, with or without compression: the proxy buffers the "
                        "stream; " + self.fix("nginx: `proxy_buffering off;` in the /stream location",
                                             "turn response buffering off for /stream at the proxy"))

    def check_cors(self, stream: Stream) -> None:
        if not self.origin or stream.response is None:
            return
        allowed = stream.response.headers.get("access-control-allow-origin")
        if allowed in (self.origin, "*"):
            credentials = stream.response.headers.get("access-control-allow-credentials") == "true"
            self.report(OK, "CORS", f"a page on {self.origin} may read the stream (Access-Control-Allow-Origin: "
                        f"{allowed}{', with credentials' if credentials else ', without credentials'})")
        else:
            self.report(FAIL, "CORS", f"a page on {self.origin} cannot read the stream (Access-Control-Allow-"
                        f"Origin: {allowed or 'absent'}); add {self.origin} to PUSHSVC_CORS_ORIGINS")

    async def publish(self, marker: str) -> str | None:
        """Publish a probe through /publish; None when it was accepted, else the problem."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body = {"channel": self.channel, "type": "pushsvc-doctor", "data": {"probe": marker}}
        try:
            response = await self.client.post(self.base + "/publish", json=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"cannot reach {self.base}/publish: {type(exc).__name__}: {exc}"
        if response.status_code == 202:
            return None
        try:
            detail = json.loads(response.text).get("detail", "")
        except (ValueError, AttributeError):
            detail = response.text[:200]
        hint = ("pass a publish token with --token" if response.status_code in (401, 403) and not self.token
                else "check the token" if response.status_code in (401, 403) else "")
        return f"{self.base}/publish answered {response.status_code} ({detail}){'; ' + hint if hint else ''}"

    async def check_delivery(self, stream: Stream) -> str | None:
        """Publish a probe and time its arrival; the id it arrived with (None: stop here)."""
        await stream.wait_for(lambda: stream.reader.last_id is not None, 1.0)  # synced: the position came
        marker = secrets.token_hex(8)
        published_at = time.monotonic()
        problem = await self.publish(marker)
        if problem is not None:
            self.report(FAIL, "publish", problem + " -- the delivery, resume and idle checks need a probe event")
            return None
        arrived = await stream.wait_for(lambda: stream.event_with(marker) is not None, HELD_BACK_SECONDS)
        found = stream.event_with(marker)
        if not arrived or found is None:
            ended = " (the stream ended)" if stream.ended_at is not None else ""
            self.report(FAIL, "buffering", f"the probe event published at {self.base}/publish did not arrive "
                        f"within {HELD_BACK_SECONDS:g} s{ended}: the proxy holds events back; "
                        + self.fix("nginx: `proxy_buffering off;` and `gzip off;` in the /stream location",
                                   "turn buffering and compression off for /stream at the proxy"))
            return None
        at, event = found
        delay = max(0.0, at - published_at)
        if delay > PROMPT_SECONDS:
            self.report(FAIL, "buffering", f"the probe event arrived {delay:.2f} s after it was published: the "
                        "proxy buffers the stream; " + self.fix("nginx: `proxy_buffering off;` in the /stream "
                                                                "location", "turn buffering off for /stream"))
        else:
            self.report(OK, "buffering", f"none: the probe event arrived {delay * 1000:.0f} ms after it was published")
        return event.id

    async def check_resume(self, client: httpx.AsyncClient, last_id: str | None) -> Stream | None:
        """Publish while disconnected, reconnect with Last-Event-ID; the resumed stream."""
        if not last_id:
            self.report(FAIL, "resume", "the probe event came without an id, so a browser could not resume; "
                        "is something between rewriting the stream?")
            return None
        marker = secrets.token_hex(8)
        problem = await self.publish(marker)
        if problem is not None:
            self.report(FAIL, "publish", problem)
            return None
        stream = Stream(client, self.stream_url(), self.stream_headers(**{"Last-Event-ID": last_id}))
        if not await stream.open(HELD_BACK_SECONDS) or stream.response is None:
            self.report(FAIL, "resume", f"the reconnect did not open within {HELD_BACK_SECONDS:g} s")
            await stream.close()
            return None
        await stream.wait_for(lambda: stream.event_with(marker) is not None or any(
            e.type == "pushsvc.reset" for _, e in stream.reader.events), HELD_BACK_SECONDS)
        if stream.event_with(marker) is not None:
            self.report(OK, "resume", "an event published while disconnected arrived after reconnecting "
                        "with Last-Event-ID")
        elif any(e.type == "pushsvc.reset" for _, e in stream.reader.events):
            self.report(FAIL, "resume", "reconnecting with Last-Event-ID got a reset instead of the missed "
                        "event: the proxy alters the Last-Event-ID header, or the service keeps no history "
                        "(PUSHSVC_HISTORY_SIZE=0)")
        else:
            self.report(FAIL, "resume", "the event published while disconnected did not arrive after "
                        "reconnecting with Last-Event-ID; make sure the proxy passes the Last-Event-ID header")
        return stream

    async def check_idle(self, stream: Stream) -> None:
        """Keep the stream idle for --idle seconds: heartbeats must come, the stream must live."""
        started = time.monotonic()
        before = len(stream.reader.comments)
        await stream.wait_for(lambda: False, self.idle_seconds)
        pings = [at for at, _ in stream.reader.comments[before:]]
        if stream.ended_at is not None and stream.ended_at - started < self.idle_seconds:
            silent = stream.ended_at - (pings[-1] if pings else started)
            cut = stream.ended_at - started
            heard = f"{len(pings)} heartbeat(s) arrived before" if pings else "no heartbeat arrived before"
            self.report(FAIL, "idle", f"the idle stream was cut after {cut:.1f} s ({heard}; {silent:.1f} s "
                        "without a byte): the proxy's read timeout is shorter than pushsvc's heartbeat "
                        "interval; " + self.fix(
                            "raise nginx's `proxy_read_timeout` in the /stream location above "
                            "PUSHSVC_KEEPALIVE_SECONDS, or lower PUSHSVC_KEEPALIVE_SECONDS below it",
                            "raise the proxy's idle/read timeout above PUSHSVC_KEEPALIVE_SECONDS, or lower "
                            "PUSHSVC_KEEPALIVE_SECONDS below it"))
            return
        if not pings:
            self.report(FAIL, "heartbeats", f"none in {self.idle_seconds:g} s idle; pushsvc sends one after "
                        "PUSHSVC_KEEPALIVE_SECONDS of silence (15 s by default): run with a longer --idle, or "
                        "something between drops comment lines")
            return
        gaps = [b - a for a, b in zip([started, *pings], pings, strict=False)]
        self.report(OK, "heartbeats", f"{len(pings)} in {self.idle_seconds:g} s idle (about every "
                    f"{max(gaps):.1f} s); the idle stream stayed open")


async def _body_excerpt(stream: Stream) -> str:
    await stream.wait_for(lambda: stream.ended_at is not None, 1.0)
    text = " ".join(stream.text.split())[:160]
    return f"({text})" if text else ""


def _h2_available() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


def run(url: str, token: str | None, idle_seconds: float, origin: str | None,
        out: Callable[[str], None] = print) -> int:
    doctor = Doctor(url, token, idle_seconds, origin, out)
    return asyncio.run(doctor.run())

