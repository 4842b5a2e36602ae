"""The fixed-rate phase's pieces that need no server class (`sse_bench.py --only fixed`):
running the paced publisher (`bench/rate_publisher.py`) in its own process, and the report.

100 subscribers; events at fixed rates (default 500, 1,000 and 2,000 events/s, 10 s each),
each server fed its native way: pushsvc (every write delay asked, and pushsvc from another
checkout with ``--base-root``) through Redis by its publish script, as `pushsvc.publisher`
does; the bare-Hypercorn floor with the same script's live messages read from Redis by a
raw subscriber (`bench/bare_asgi.py`, ``BENCH_FEED_REDIS``); Nchan by pipelined HTTP POST to
its publish location.  Per step: server CPU per delivery (whole process tree, /proc), Redis
CPU per event beside it (not counted in the server's), p50/p99/max latency, loss,
duplicates, and the load generator's own CPU (subscriber processes + publisher).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SUBSCRIBERS = 100


def run_publisher(mode: str, rate: float, seconds: float, first_seq: int, *, redis_url: str = "",
                  root: Path | None = None, port: int = 0, path: str = "") -> dict[str, Any]:
    """One paced publishing step in a child process; its JSON result (sent, achieved rate,
    max lag behind the schedule, replies, errors, its own CPU)."""
    cmd = [sys.executable, str(HERE / "rate_publisher.py"), mode, "--rate", str(rate), "--seconds", str(seconds),
           "--first-seq", str(first_seq)]
    if mode == "script":
        cmd += ["--redis", redis_url] + (["--root", str(root)] if root else [])
    else:
        cmd += ["--port", str(port), "--path", path]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"publisher failed: {done.stderr[-1500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's repeated runs (``--repeat``) as one: per rate, the median of CPU per
    delivery, Redis CPU, latency and load-generator CPU, the worst p99 and max, loss and
    duplicates summed, and the CPU-per-delivery range over the repeats."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    if len(ok) == 1:
        return ok[0]
    steps = []
    for rate in sorted({s["rate"] for r in ok for s in r["steps"]}):
        group = [s for r in ok for s in r["steps"] if s["rate"] == rate]
        step = dict(group[0])
        for key in ("achieved_rate", "cpu_per_delivery_us", "redis_cpu_per_event_us", "p50_ms", "p99_ms",
                    "subscribers_cpu_pct", "publisher_cpu_pct", "loadgen_cpu_pct", "server_cpu_pct",
                    "redis_cpu_pct", "events_per_read"):
            step[key] = statistics.median(s[key] for s in group)
        for key in ("loss", "dups", "closed", "expected", "deliveries", "sent"):
            step[key] = sum(s[key] for s in group)
        step["max_ms"] = max(s["max_ms"] for s in group)
        step["p99_worst_ms"] = max(s["p99_ms"] for s in group)
        step["max_behind_ms"] = max(s["max_behind_ms"] for s in group)
        step["cpu_range_us"] = [min(s["cpu_per_delivery_us"] for s in group),
                                max(s["cpu_per_delivery_us"] for s in group)]
        step["repeats"] = len(group)
        steps.append(step)
    return {"subscribers": ok[0]["subscribers"], "steps": steps, "repeats": len(ok)}


def _fmt(v: Any, spec: str = ",.1f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}"


def markdown(fixed: dict[str, Any], nchan: str = "nchan") -> list[str]:
    """The fixed-rate table (one row per server and rate, ratios to Nchan at the same rate)
    and the issue's targets checked at the highest rate."""
    if not fixed:
        return []
    lines = ["", f"### Fixed rate: {SUBSCRIBERS} subscribers, events at a fixed rate "
             "(pushsvc and the floor fed through Redis by pushsvc's publish script, Nchan by HTTP POST)", "",
             "| server | events/s asked | achieved (most behind schedule, ms) | server CPU/delivery µs | x Nchan "
             "| events per read "
             "| Redis CPU/event µs | p50 ms | p99 ms | max ms | loss | dups "
             "| load generator CPU % of a core (subscribers + publisher) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {s["rate"]: s for s in fixed.get(nchan, {}).get("steps", [])}
    rates = sorted({s["rate"] for r in fixed.values() for s in r.get("steps", [])})
    for rate in rates:
        for name, r in fixed.items():
            if "error" in r:
                if rate == rates[0]:
                    lines.append(f"| {name} | failed: {r['error'][:100].splitlines()[0]} ||||||||||||")
                continue
            step = next((s for s in r["steps"] if s["rate"] == rate), None)
            if step is None:
                continue
            ref = base.get(rate, {}).get("cpu_per_delivery_us")
            lg = f"{step['loadgen_cpu_pct']:.0f} ({step['subscribers_cpu_pct']:.0f} + {step['publisher_cpu_pct']:.0f})"
            cpu = _fmt(step["cpu_per_delivery_us"], ".2f")
            if "cpu_range_us" in step:
                cpu += " ({:.2f}-{:.2f})".format(*step["cpu_range_us"])
            p99 = _fmt(step["p99_ms"])
            if "p99_worst_ms" in step:
                p99 += f" ({step['p99_worst_ms']:.1f})"
            lines.append(
                f"| {name} | {rate:,} | {step['achieved_rate']:,.0f} ({step['max_behind_ms']:.0f}) | {cpu} "
                f"| {_ratio(step['cpu_per_delivery_us'], ref)} | {_fmt(step.get('events_per_read'), '.1f')} "
                f"| {_fmt(step['redis_cpu_per_event_us'])} "
                f"| {_fmt(step['p50_ms'])} | {p99} | {_fmt(step['max_ms'])} "
                f"| {step['loss']:,} | {step['dups']} | {lg} |")
    lines += ["", "Events per read: deliveries / the subscribers' socket reads, about how many events each "
              "server write carried (coalescing) while the subscribers kept up."]
    repeats = max((r.get("repeats", 1) for r in fixed.values()), default=1)
    if repeats > 1:
        lines += ["", f"Each server ran {repeats} times, in turn; figures are medians over the runs, "
                  "CPU/delivery with its range in brackets, p99 with the worst run's in brackets; "
                  "loss and dups are totals."]
    lines += targets(fixed, max(rates, default=0), nchan)
    return lines


def targets(fixed: dict[str, Any], rate: int, nchan: str) -> list[str]:
    """Issue 16's fixed-rate targets at `rate`, as ratios within this run."""
    def step(name: str) -> dict[str, Any] | None:
        r = fixed.get(name, {})
        return next((s for s in r.get("steps", []) if s["rate"] == rate), None)

    ref = step(nchan)
    lines = ["", f"Targets at {rate:,} events/s x {SUBSCRIBERS} (issue 16):", ""]
    d10 = step("pushsvc-d10")
    if d10 and ref:
        ratio = d10["cpu_per_delivery_us"] / ref["cpu_per_delivery_us"]
        p99 = d10.get("p99_worst_ms", d10["p99_ms"])
        ok = ratio <= 0.5 and p99 <= 100 and d10["loss"] == 0 and d10["dups"] == 0
        lines.append(f"* write delay 10 ms: CPU/delivery {ratio:.2f}x Nchan (≤ 0.5), worst p99 {p99:.1f} ms "
                     f"(≤ 100), loss {d10['loss']}, dups {d10['dups']}: **{'met' if ok else 'not met'}**")
    d0, before = step("pushsvc-d0"), step("pushsvc-base")
    if d0 and before:
        cpu = d0["cpu_per_delivery_us"] / before["cpu_per_delivery_us"]
        p99 = d0["p99_ms"] / before["p99_ms"] if before["p99_ms"] else math.nan
        ok = cpu <= 1.05 and (p99 <= 1.05 or d0["p99_ms"] <= 10) and d0["loss"] <= before["loss"]
        lines.append(f"* write delay 0 against the base checkout: CPU/delivery {cpu:.2f}x, p99 {p99:.2f}x "
                     f"({d0['p99_ms']:.1f} vs {before['p99_ms']:.1f} ms), loss {d0['loss']} vs {before['loss']} "
                     f"(no worse within 5%): **{'met' if ok else 'not met'}**")
    return lines if len(lines) > 3 else []
