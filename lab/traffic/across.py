"""Across the fault: what the held connections saw around a drill's fault."""

from __future__ import annotations

import json
import time
from typing import Any


def read_fault(path: str, start: float, start_wall: float) -> float | None:
    """The fault's wall-clock time from the drill's file, as this process's monotonic time."""
    try:
        with open(path) as fh:
            return start + (float(json.load(fh)["at"]) - start_wall)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cut_after(interval: float) -> float:
    """A silence longer than this cut a connection: an echo the old master had already
    passed on can land just after the fault, so only a connection silent for longer than
    its own rhythm was cut, and its first echo after that came through the new master."""
    return max(2.5 * interval, 0.05)


def fault_report(args, live, start: float, start_wall: float,
                 fault_at: float | None) -> dict[str, Any] | None:
    """From the fault on: each connection's longest silence that ended after the fault
    (spanning it in a takeover, or later in a failback, when the restored node preempts;
    a connection that got no echo after the fault counts to the end), how many were cut
    (that silence longer than `cut_after`), and when the first of those silences ended
    (takeover_ms). Not the first cut of any kind: on a busy machine a connection can be
    silent a little longer than its rhythm just before the fault and get an echo the old
    master passed on just after it (9 ms after a kill whose new master took 290 ms)."""
    if not args.fault_file:
        return None
    at = fault_at or read_fault(args.fault_file, start, start_wall)
    if at is None:
        return None
    end = time.monotonic()
    cut = cut_after(args.interval)
    firsts, gaps = [], []
    for c in live:
        if c.after_gap is not None:
            since, until = c.after_gap
            gaps.append((until - since) * 1000)
            if until - since > cut:
                firsts.append(until)
        else:
            gaps.append((end - c.last_echo) * 1000 if c.last_echo <= at else 0.0)
    gaps.sort()

    def pct(p: float) -> float | None:
        return round(gaps[min(len(gaps) - 1, int(p * len(gaps)))], 1) if gaps else None

    return {
        "at": start_wall + (at - start),
        "takeover_ms": round((min(firsts) - at) * 1000, 1) if firsts else None,
        "interrupted": len(firsts),
        "gap_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
    }
