"""`pushsvc serve` exactly as shipped, except that /stream and /publish go through the Quart
routes instead of the pure-ASGI path (pushsvc/fastpath.py): the bench's `pushsvc-quart`
variant, to measure what Quart costs per stream and per publish in the same run."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pushsvc.server as server
from pushsvc.cli import main

server.asgi_app = lambda app: app  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(main())
