"""pushsvc.js as served: the package file at /pushsvc.js as text/javascript, identical to
the vendorable copy in clients/js/, and small (gzipped as served, unminified: an upper
bound of its minified + gzipped size)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from pushsvc.app import create_app
from pushsvc.config import Settings

ROOT = Path(__file__).resolve().parents[2]
LIMIT_BYTES = 4096


async def served() -> tuple[int, str, bytes]:
    app = create_app(Settings())
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/pushsvc.js")
        return response.status_code, response.headers["Content-Type"], await response.get_data()


async def test_pushsvc_js_is_served_as_javascript_and_is_the_vendored_copy():
    status, content_type, body = await served()
    assert status == 200
    assert content_type.startswith("text/javascript")
    assert body == (ROOT / "clients" / "js" / "pushsvc.js").read_bytes()
    assert b"export class PushStream" in body
    package = json.loads((ROOT / "clients" / "js" / "package.json").read_text())
    assert package["main"] == "pushsvc.js" and package["type"] == "module"


async def test_pushsvc_js_is_under_4_kib_gzipped_without_minifying():
    _, _, body = await served()
    size = len(gzip.compress(body, 9))
    print(f"pushsvc.js: {len(body)} bytes, {size} bytes gzipped")
    assert size < LIMIT_BYTES
