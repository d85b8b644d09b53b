"""Across the fault: what the held connections saw around a drill's fault."""

from __future__ import annotations

import bisect
import json
import time
from typing import Any


def read_faults(path: str, start: float, start_wall: float) -> list[float]:
    """The faults' wall-clock times from the drill's file (`{"at": T}` for one fault, `{"at":
    [T1, T2, ...]}` for a sequence, in order), as this process's monotonic times; none
    while the file is missing or half-written."""
    try:
        with open(path) as fh:
            at = json.load(fh)["at"]
        return [start + (float(t) - start_wall) for t in (at if isinstance(at, list) else [at])]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def step_of(ats: list[float], t: float) -> int:
    """The index of the last fault at or before `t` (0 before the first)."""
    return max(0, bisect.bisect_right(ats, t) - 1)


def cut_after(interval: float) -> float:
    """A silence longer than this cut a connection: an echo the old master had already
    passed on can land just after the fault, so only a connection silent for longer than
    its own rhythm was cut, and its first echo after that came through the new master."""
    return max(2.5 * interval, 0.05)


def fault_reports(args, live, start: float, start_wall: float,
                  ats: list[float]) -> dict[str, Any]:
    """`fault`: the report of the first fault (None without one); with more than one,
    `faults`: a report per fault, each over the silences that ended after it and before the
    next one (a silence that ended in the moment before the hold learned of a fault, at
    most one check of the file, may count to the fault before it too)."""
    if not args.fault_file:
        return {"fault": None}
    ats = ats or read_faults(args.fault_file, start, start_wall)
    if not ats:
        return {"fault": None}
    reports = [fault_report(args, live, start, start_wall, ats, k) for k in range(len(ats))]
    return {"fault": reports[0], **({"faults": reports} if len(reports) > 1 else {})}


def fault_report(args, live, start: float, start_wall: float,
                 ats: list[float], k: int = 0) -> dict[str, Any]:
    """From fault k on (until the next one, in a sequence): each connection's longest
    silence that ended after the fault (spanning it in a takeover, or later in a failback, when the restored node preempts;
    a connection that got no echo after the fault counts to the end), how many were cut
    (that silence longer than `cut_after`), and when the first of those silences ended
    (takeover_ms). Not the first cut of any kind: on a busy machine a connection can be
    silent a little longer than its rhythm just before the fault and get an echo the old
    master passed on just after it (9 ms after a kill whose new master took 290 ms)."""
    at = ats[k]
    end = time.monotonic()
    cut = cut_after(args.interval)
    firsts, gaps = [], []
    for c in live:
        gap = c.after_gaps.get(k)
        if gap is not None:
            since, until = gap
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
