"""Failover: kill drills against the pair lab, at 100 ms and at 10 ms adverts.

Each round is `lab.drill.run(fault="kill")` on the master (A: links down, then
SIGKILL) with CONNS echo connections writing every 20 ms, then
`lab.drill.run(fault="restore")` (A comes back, takes its table from B by bulk
resync and preempts; its connections must survive the failback too: counted).
The restore's own timing is not a takeover figure (A's restart outlasts the
drill's window), so only its survival counts are kept.
`takeover_ms` is the drill's own: fault -> first echo through the new master,
what a client sees.  `vrrp_takeover_ms` (fault -> new master holds the
addresses) is reported alongside.

A kill drill whose fault landed too late in its traffic window to be seen (the
lab's fault step can take seconds on a loaded box: pyroute2 in namespaces) has
no takeover to measure: it is set aside, with its timing, and another is run
(at most EXTRA of them), so the statistics are over drills that measured one.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

from bench import common

PREFIX = "tbfo"
CONNS = 150
INTERVAL = 0.02
EXTRA = 3


def _valid(k: dict, duration: float) -> tuple[bool, float | None]:
    """Did the fault fall inside the traffic window with time to see the takeover?"""
    at, start = k.get("fault_at"), k.get("hold_started_at")
    offset = round(at - start, 3) if at is not None and start is not None else None
    ok = offset is not None and offset <= duration - 1.0 and k.get("takeover_ms") is not None
    return ok, offset


def _pct(xs: list[float], p: float) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def drills(advert: float, n: int, duration: float, lead: float) -> dict[str, Any]:
    from lab import drill, topology
    t0 = time.monotonic()
    kills, restores, errors, invalid = [], [], [], []
    with common.lab(PREFIX, node=True, ha=True, advert_interval=advert):
        for i in range(n + EXTRA):
            if len(kills) >= n:
                break
            try:
                k = drill.run(PREFIX, fault="kill", conns=CONNS, duration=duration, lead=lead,
                              interval=INTERVAL)
                k.pop("echo_bins_10ms", None)
                ok, k["fault_offset_s"] = _valid(k, duration)
                (kills if ok else invalid).append(k)
            except Exception as exc:  # noqa: BLE001 - counted, the next round goes on
                errors.append(f"kill {i}: {exc!r}"[:300])
            try:
                r = drill.run(PREFIX, fault="restore", conns=min(CONNS, 50), duration=duration,
                              lead=lead, interval=INTERVAL)
                r.pop("echo_bins_10ms", None)
                restores.append(r)
                topology.wait_role(PREFIX, "a", "master", 10)
                topology.wait_role(PREFIX, "b", "backup", 10)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"restore {i}: {exc!r}"[:300])
                try:        # put the pair back whatever happened
                    topology.fault(PREFIX, "a", "restore")
                    topology.wait_role(PREFIX, "a", "master", 10)
                except Exception as exc2:  # noqa: BLE001
                    errors.append(f"recover {i}: {exc2!r}"[:300])
                    break
    tk = [k["takeover_ms"] for k in kills if k.get("takeover_ms") is not None]
    vr = [k["vrrp_takeover_ms"] for k in kills if k.get("vrrp_takeover_ms") is not None]
    keep = ("takeover_ms", "vrrp_takeover_ms", "survived", "reset", "stalled", "gap_ms",
            "dual_master_ms", "new_master", "fault_offset_s")
    return {
        "advert_interval_s": advert,
        "drills": len(kills),
        "takeover_ms": tk,
        "takeover_ms_p50": round(statistics.median(tk), 1) if tk else None,
        "takeover_ms_max": max(tk) if tk else None,
        "vrrp_takeover_ms_p50": round(statistics.median(vr), 1) if vr else None,
        "vrrp_takeover_ms_max": max(vr) if vr else None,
        "gap_ms_p99_max": max((k["gap_ms"]["p99"] for k in kills if k["gap_ms"]["p99"] is not None),
                              default=None),
        "conns_per_drill": CONNS,
        "survived_min": min((k["survived"] for k in kills), default=None),
        "reset_total": sum(k["reset"] for k in kills),
        "stalled_total": sum(k["stalled"] for k in kills),
        "kills": [{k: d.get(k) for k in keep} for d in kills],
        "restores": [{k: d.get(k) for k in ("survived", "reset", "stalled", "new_master")}
                     for d in restores],
        "restore_survived_min": min((d["survived"] for d in restores), default=None),
        "restore_conns": min(CONNS, 50),
        "restore_reset_total": sum(d["reset"] for d in restores),
        "set_aside": [{k: d.get(k) for k in keep} for d in invalid],
        "errors": errors,
        "seconds": round(time.monotonic() - t0, 1),
    }


def run(quick: bool = False) -> dict[str, Any]:
    t0 = time.monotonic()
    n = 2 if quick else 10
    duration, lead = (2.5, 0.8) if quick else (3.5, 1.0)
    d100 = drills(0.1, n, duration, lead)
    d10 = drills(0.01, n, duration, lead)
    return {
        "takeover_ms_p50": d100["takeover_ms_p50"], "takeover_ms_max": d100["takeover_ms_max"],
        "takeover_ms_p50_10ms": d10["takeover_ms_p50"], "takeover_ms_max_10ms": d10["takeover_ms_max"],
        "advert_100ms": d100, "advert_10ms": d10,
        "seconds": round(time.monotonic() - t0, 1),
    }


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run("--quick" in sys.argv), indent=1))
