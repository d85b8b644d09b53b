"""Health checks: how long a stopped real server stays in scheduling, and how long a
restarted one stays out.

A single node (no election) with a TCP check on each real server (interval 0.5 s,
timeout 0.3 s, fall 3, rise 2, as tests/lab/test_operations.py configures it).  Each
round stops rs2's echo server (SIGTERM, by PID), polls the node's /services until rs2
is `down`, starts it again and polls until it is `up`.  By design a check notices a
dead server after `fall` failed probes (fall x interval, plus up to one interval to the
next probe) and a live one after `rise`; the figures say what the node does on this box.
The test judges only that the server leaves scheduling and comes back; the time is here.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from bench import common

PREFIX = "tbhc"
INTERVAL, TIMEOUT, FALL, RISE = 0.5, 0.3, 3, 2
#: the longest a transition is waited for before the round counts as failed
WAIT = 15.0
POLL = 0.05


def _services() -> list[dict[str, Any]]:
    from lab import topology as T
    health = {"kind": "tcp", "interval": INTERVAL, "timeout": TIMEOUT, "fall": FALL, "rise": RISE}
    return [{"proto": "tcp", "vip": T.VIP, "port": 80, "scheduler": "wlc", "laddrs": list(T.LADDRS),
             "real_servers": [{"addr": r["addr"], "port": T.RS_PORT, "weight": 1}
                              for r in T.REAL_SERVERS],
             "health": health}]


def _health(addr: str) -> str | None:
    body = common.api_get(PREFIX, "a", "/services", timeout=2.0)
    for svc in body["services"]:
        for r in svc["real_servers"]:
            if r["addr"] == addr:
                return r.get("health")
    return None


def _until(addr: str, want: str) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < WAIT:
        try:
            if _health(addr) == want:
                return round(time.monotonic() - t0, 3)
        except Exception:  # noqa: BLE001 - the API busy: poll again
            pass
        time.sleep(POLL)
    return None


def run(quick: bool = False) -> dict[str, Any]:
    from lab import state as st
    from lab import topology as T
    t0 = time.monotonic()
    rounds = 2 if quick else 5
    addr = next(r["addr"] for r in T.REAL_SERVERS if r["name"] == "rs2")
    down, up, errors = [], [], []
    with common.lab(PREFIX, node=True, ha=False, config_extra={"services": _services()}):
        if _until(addr, "up") is None:
            return {"error": "rs2 never up at the start", "seconds": round(time.monotonic() - t0, 1)}
        for i in range(rounds):
            state = st.load_state(PREFIX)
            rec = [p for p in state["processes"] if p["name"] == "echo-rs2"][-1]
            st.stop_process(rec)
            d = _until(addr, "down")
            state = st.load_state(PREFIX)
            state["processes"].append(st.start_process(rec["ns"], rec["name"], rec["cmd"],
                                                       Path(rec["log"])))
            st.save_state(PREFIX, state)
            u = _until(addr, "up")
            if d is None or u is None:
                errors.append(f"round {i}: down {d}, up {u}")
            down += [d] if d is not None else []
            up += [u] if u is not None else []
    return {
        "interval_s": INTERVAL, "fall": FALL, "rise": RISE,
        "down_by_design_s": FALL * INTERVAL, "up_by_design_s": RISE * INTERVAL,
        "health_down_s": down, "health_up_s": up,
        "health_down_s_p50": round(statistics.median(down), 3) if down else None,
        "health_down_s_max": max(down) if down else None,
        "health_up_s_p50": round(statistics.median(up), 3) if up else None,
        "health_up_s_max": max(up) if up else None,
        "errors": errors,
        "seconds": round(time.monotonic() - t0, 1),
    }


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run("--quick" in sys.argv), indent=1))
