"""`pushsvc serve` exactly as shipped, except that /stream and /publish go through the Quart
routes instead of the fast door (pushsvc/fastpath.py, closed after create_app mounts it): the bench's `pushsvc-quart`
variant, to measure what Quart costs per stream and per publish in the same run."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pushsvc.app as app_module
from pushsvc.cli import main

_create_app = app_module.create_app


def create_app(settings=None):  # type: ignore[no-untyped-def]
    app = _create_app(settings)
    app.extensions["pushsvc.fastpath"].enabled = False  # create_app mounts the fast door: close it
    return app


app_module.create_app = create_app

if __name__ == "__main__":
    sys.exit(main())
