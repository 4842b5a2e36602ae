"""A request cannot forge log lines: control characters in what is logged (a URL path with
``%0a``, a request id) are escaped by the text log format, in a real pushsvc process."""

from __future__ import annotations

import asyncio

from tests.support.procs import wait_until


async def raw_request(port: int, target: str) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def test_a_percent_encoded_newline_in_the_path_cannot_forge_an_access_line(service_factory):
    service = service_factory()
    forged = "FORGED INFO pushsvc.access: request path=/admin status=200"
    target = "/nope%0a" + forged.replace(" ", "%20") + "%0d%0aFORGED2"
    answer = await raw_request(service.port, target)
    assert answer.startswith(b"HTTP/1.1 404")
    wait_until(lambda: "/nope" in service.log(), 5, what="the access line")
    lines = service.log().splitlines()
    assert not [line for line in lines if line.startswith("FORGED")]
    logged = [line for line in lines if "/nope" in line]
    assert len(logged) == 1 and "/nope\\nFORGED INFO" in logged[0] and "\\r\\nFORGED2" in logged[0]
