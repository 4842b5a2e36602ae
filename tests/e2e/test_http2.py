"""HTTP/2 with TLS through Hypercorn's settings (certfile/keyfile in the TOML that
`pushsvc serve --config` reads, although it binds its own socket): several streams
multiplex on ONE TCP connection, past HTTP/1.1's six-connections-per-origin limit.

The streams are read with the h2 library directly: httpx 0.28 / httpcore 1.0 with
``http2=True`` stalled here when several streams of one connection were read concurrently
(only the first got its event) while curl ``--http2 -Z`` on one connection got all of them,
so the server side is fine.  Publishing uses httpx over HTTP/2."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import sys
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from tests.support.h2stall import StalledH2Client
from tests.support.helpers import TOKEN, metric
from tests.support.load import PeakRSS, publish_bulk
from tests.support.procs import ROOT, Service, require_binary

pytestmark = pytest.mark.e2e

STREAMS = 8  # more than a browser's six HTTP/1.1 connections


class TLSService(Service):
    def __init__(self, config: Path, cafile: Path, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.config = config
        self.ssl = ssl.create_default_context(cafile=str(cafile))

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pushsvc.cli", "serve", "--bind", f"127.0.0.1:{self.port}",
                "--config", str(self.config)]

    def _answers(self, path: str) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"pushsvc exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.base + path, timeout=1, verify=self.ssl).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.fixture
def tls_service(tmp_path: Path):
    openssl = require_binary("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )
    config = tmp_path / "hypercorn.toml"
    config.write_text((ROOT / "hypercorn.toml").read_text()
                      + f'\ncertfile = "{cert}"\nkeyfile = "{key}"\n')
    service = TLSService(config, cert, env={"PUSHSVC_PUBLISH_TOKENS": TOKEN})
    try:
        yield service.start()
    finally:
        service.stop()


def established_server_sockets(port: int) -> int:
    """ESTABLISHED TCP sockets whose local port is `port` (the server's side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    count += 1
    return count


class H2Client:
    """A minimal HTTP/2 client on one TLS connection (the h2 library over asyncio), so the
    test sees exactly how many TCP connections carry how many streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.status: dict[int, int] = {}
        self.body: dict[int, bytearray] = {}

    @classmethod
    async def connect(cls, port: int, context: ssl.SSLContext) -> H2Client:
        context.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"), 5)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        client = cls(reader, writer)
        client.conn.initiate_connection()
        await client.flush()
        return client

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def get(self, path: str) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [(":method", "GET"), (":scheme", "https"),
                                           (":authority", "127.0.0.1"), (":path", path)], end_stream=True)
        self.body[stream_id] = bytearray()
        await self.flush()
        return stream_id

    async def read_until(self, predicate: object, timeout: float = 10) -> None:
        async def loop() -> None:
            while not predicate():  # type: ignore[operator]
                data = await self.reader.read(65536)
                assert data, "the connection closed"
                for event in self.conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        self.status[event.stream_id] = int(dict(event.headers)[b":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        self.body[event.stream_id] += event.data
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                await self.flush()

        await asyncio.wait_for(loop(), timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


async def test_many_streams_multiplex_on_one_http2_connection(tls_service):
    service = tls_service
    client = await H2Client.connect(service.port, service.ssl)
    try:
        streams = [await client.get(f"/stream?channel=h2-{n}") for n in range(STREAMS)]
        # Every stream answered 200 and is synced (its first `id:` line arrived).
        await client.read_until(lambda: all(b"\nid: " in client.body[s] for s in streams))
        assert [client.status[s] for s in streams] == [200] * STREAMS
        assert established_server_sockets(service.port) == 1

        async with httpx.AsyncClient(http2=True, verify=service.ssl, timeout=10) as publisher:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            for n in range(STREAMS):
                response = await publisher.post(f"{service.base}/publish", headers=auth,
                                                json={"channel": f"h2-{n}", "data": f"only {n}"})
                assert response.status_code == 202 and response.http_version == "HTTP/2"
            response = await publisher.post(f"{service.base}/publish", headers=auth,
                                            json={"channel": [f"h2-{n}" for n in range(STREAMS)], "data": "all"})
            assert response.status_code == 202
        await client.read_until(lambda: all(b"data: all\n" in client.body[s] for s in streams))
        for n, stream_id in enumerate(streams):
            data = [line for line in bytes(client.body[stream_id]).split(b"\n") if line.startswith(b"data:")]
            assert data == [f"data: only {n}".encode(), b"data: all"]
    finally:
        await client.close()


async def test_over_tls_http11_streams_get_every_event_whole_and_in_order(tls_service):
    """The same TLS service read over HTTP/1.1 (ALPN ``http/1.1``): the events arrive whole
    and in order."""
    service = tls_service
    context = service.ssl
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(verify=context, timeout=10) as client:
        async with client.stream("GET", f"{service.base}/stream?channel=tls-h1") as response:
            assert response.status_code == 200 and response.http_version == "HTTP/1.1"
            lines = response.aiter_lines()
            async with asyncio.timeout(10):
                async for line in lines:  # synced: its position's id
                    if line.startswith("id: "):
                        break
                for n in range(5):
                    answer = await client.post(f"{service.base}/publish", headers=auth,
                                               json={"channel": "tls-h1", "data": f"event {n}"})
                    assert answer.status_code == 202
                data = []
                async for line in lines:
                    if line.startswith("data: "):
                        data.append(line)
                        if len(data) == 5:
                            break
        assert data == [f"data: event {n}" for n in range(5)]


# -- a peer that stops reading ------------------------------------------------------------

STALLED = 50
H2_RSS_BOUND = 96 * 1024 * 1024  # as tests/e2e/test_slow_consumers.py: the per-stream bound, not the traffic


@pytest.mark.parametrize("mode", ["serve", "hypercorn"])  # create_app applies the correction: plain hypercorn too
async def test_a_stalled_http2_stream_is_cut_reset_and_freed(service_factory, redis_url, http, mode):
    """50 streams on one h2c connection whose window is 0 while ~20 MB are published: each
    is cut when its bounded queue overflows (as a stalled HTTP/1.1 stream), the client gets
    RST_STREAM for every one, and the process stays within the per-stream memory bound.

    Fails on unpatched Hypercorn 0.18 (pushsvc/h2fix.py): its StreamBuffer.pop releases
    backpressure on a zero window, so sends never wait, nothing overflows, memory grows by
    the traffic times the streams, and a closed stream is never reset."""
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_TCP_USER_TIMEOUT_MS": "0",
                               "PUSHSVC_WRITE_TIMEOUT_SECONDS": "0"}, mode=mode)  # only the queue bound may cut
    assert service.proc is not None
    client = await StalledH2Client.connect(service.port)
    try:
        streams = [await client.open("/stream?channel=h2-stalled") for _ in range(STALLED)]
        await client.wait_for(lambda: len(client.status) == STALLED, 10)
        assert set(client.status.values()) == {200}

        async def all_open() -> None:
            while await metric(http, service, "pushsvc_open_streams") < STALLED:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(all_open(), 10)
        async with PeakRSS(service.proc.pid) as rss:
            await publish_bulk(service.base, "h2-stalled", 20 * 1024 * 1024, 10 * 1024)
            await client.wait_for(lambda: client.reset >= set(streams) or client.closed, 30)
        assert client.reset >= set(streams), f"{len(client.reset)} of {STALLED} streams reset"
        assert client.body_bytes == 0  # the window stayed shut: nothing could have been read
        assert await metric(http, service, "pushsvc_slow_consumer_disconnects_total") == STALLED
        assert await metric(http, service, "pushsvc_open_streams") == 0
    finally:
        await client.close()
    print(f"RSS growth under {STALLED} stalled HTTP/2 streams: {rss.growth / 2**20:.1f} MiB")
    assert rss.growth < H2_RSS_BOUND, f"RSS grew by {rss.growth / 2**20:.1f} MiB"
