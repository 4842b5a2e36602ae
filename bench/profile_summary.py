"""Summarise py-spy raw profiles (`sse_bench.py --profile DIR`: collapsed stacks, one
``frame;frame;... count`` per line) as the top frames by share of the samples.

    python bench/profile_summary.py /tmp/prof/pushsvc-d0-fixed-2000.txt /tmp/prof/pushsvc-d10-fixed-2000.txt
    python bench/profile_summary.py --top 15 --markdown /tmp/prof/*.txt

Per file: the samples taken (py-spy counts only samples where a thread was running Python
or was in C code called from it, not waiting in ``epoll``), then

* **self**: the innermost frame of each sample -- where the time is spent (a frame such
  as ``Runner.run`` as the innermost one means the event loop's own C code: uvloop callbacks,
  socket reads, ``epoll`` bookkeeping);
* **inclusive**: every frame counted once per sample it appears in -- which call paths the
  time belongs to (frames present in nearly every sample, the process's entry points, are
  left out).

* **where**: each sample in one bucket of a delivery's path, the first that matches --
  the socket write, Hypercorn's and h11's per-chunk path around it, pushsvc's stream
  (cursor, queue, session), the Redis reader and hub fan-out, uvloop's own C code, the rest.

Frames are ``function (file)``, line numbers dropped, so one function is one row.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "python3.11/", "lib/python3/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


BUCKETS = [
    ("socket write (transport.write: the send system call)", lambda fs: fs[-1].startswith("StreamWriter.write")),
    ("Hypercorn + h11 per-chunk path around it", lambda fs: any(f.startswith("HTTPStream.app_send") for f in fs)),
    ("pushsvc stream: cursor, queue, session, pump", lambda fs: any(f.startswith("pump (pushsvc") for f in fs)
     or any(f.startswith(("Hub._flush_due", "Hub.cool")) for f in fs)),
    ("Redis reader: parse once, route, fan out into queues", lambda fs: any("pubsub.py" in f for f in fs)),
    ("uvloop's C code (callbacks, socket reads, timers)", lambda fs: fs[-1].startswith("Runner.run")),
    ("Hypercorn, other", lambda fs: any("hypercorn/" in f for f in fs)),
]


def buckets(path: Path) -> tuple[int, Counter[str]]:
    """(samples, samples per bucket of BUCKETS, plus "other")."""
    total = 0
    out: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [frame_name(f) for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        total += int(count_text)
        label = next((name for name, match in BUCKETS if match(frames)), "other")
        out[label] += int(count_text)
    return total, out


def read(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, self counts, inclusive counts) of one raw py-spy file."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, own, inclusive


def summary(path: Path, top: int) -> str:
    total, own, inclusive = read(path)
    _, where = buckets(path)
    lines = [f"#### {path.stem}: {total:,} samples", "", "| where % | part of the path |", "|---|---|"]
    lines += [f"| {100 * where[name] / total:.1f} | {name} |" for name in [b[0] for b in BUCKETS] + ["other"]]
    lines += ["", "| self % | frame |", "|---|---|"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in own.most_common(top)]
    lines += ["", "| inclusive % | frame |", "|---|---|"]
    paths = [(name, n) for name, n in inclusive.most_common() if n < 0.97 * total][:top]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in paths]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    for path in args.files:
        print(summary(path, args.top))


if __name__ == "__main__":
    main()
