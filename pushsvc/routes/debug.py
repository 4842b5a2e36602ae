"""``/debug/gc``: the live objects and what the collector frees, for leak tests.

Registered only with ``PUSHSVC_DEBUG_GC=true`` (never in production: a report walks every
object of the process).

* ``GET /debug/gc``: ``{"objects", "allocated_blocks", "full_collections", "by_package"}``
  -- the objects the collector tracks (also counted by their type's top-level package),
  pymalloc's allocated blocks, and the full collections run so far -- without collecting
  anything; with ``?types=1`` also the 40 most numerous types.
* ``POST /debug/gc?save=1``: a full collection, then every later collection *keeps* what
  it finds in reference cycles (``gc.DEBUG_SAVEALL``) instead of freeing it.
* ``POST /debug/gc?save=0``: a full collection, then the report of what all collections
  since ``save=1`` found in cycles, by type (``{"garbage": {"module.Type": count}}``); the
  kept objects are then released and collections free cycles again.
"""

from __future__ import annotations

import gc
import sys
from collections import Counter
from typing import Any

from quart import Blueprint, request

from ..metrics import GC

bp = Blueprint("debug", __name__)


def _state() -> dict[str, Any]:
    objects = gc.get_objects()
    packages = Counter(str(type(o).__module__).partition(".")[0] for o in objects)
    return {"objects": len(objects), "allocated_blocks": sys.getallocatedblocks(),
            "full_collections": GC.collections[2], "by_package": dict(packages.most_common())}


@bp.get("/debug/gc")
async def live() -> dict[str, Any]:
    state = _state()
    if request.args.get("types") == "1":
        state["types"] = dict(_by_type(gc.get_objects()).most_common(40))
    return state


def _by_type(objects: list[Any]) -> Counter[str]:
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)


@bp.post("/debug/gc")
async def collect() -> dict[str, Any]:
    gc.collect()
    found = _by_type(gc.garbage)
    gc.garbage.clear()
    gc.set_debug(0)
    gc.collect()  # what the kept objects held in cycles
    if request.args.get("save") == "1":
        gc.set_debug(gc.DEBUG_SAVEALL)
    return {**_state(), "garbage": dict(found.most_common())}
