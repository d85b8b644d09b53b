"""Figures of the BGP lab (docs/cluster.md): route withdrawal times and ECMP reshuffles.

    flock /tmp/tandem-lab.lock .venv/bin/python -m lab.bgp_measure --runs 5

Prints JSON.  Needs root and the lab lock; builds and removes its own namespaces
(prefix ``clbench``).  Measurements, not tests: nothing here judges the figures.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import Any

from . import bgp, bgp_traffic
from . import state as st


def withdrawal(prefix: str, runs: int, n: int, bfd: bool) -> dict[str, Any]:
    """Route withdrawal time at the router for a crashed director (link lost, then
    SIGKILL; from the link loss until the VIP's multipath route lost that next hop) and
    for a graceful withdrawal (an empty include and `birdc configure`), in seconds, one
    figure per run; and how long a restored director takes to be a next hop again."""
    try:
        info = bgp.up(prefix, n, timers=bgp.Timers(bfd=bfd), announce_laddrs=False)
        hops = [d["addr"] for d in info["directors"]]
        victim = info["directors"][-1]["name"]
        bgp.wait_nexthops(prefix, bgp.VIP, hops, wait=30)
        state = st.load_state(prefix) or {}
        crash, graceful, back = [], [], []
        for _ in range(runs):
            t0 = bgp.crash_director(prefix, state, victim)
            bgp.wait_nexthops(prefix, bgp.VIP, hops[:-1], poll=0.005)
            crash.append(round(time.monotonic() - t0, 3))
            t0 = time.monotonic()
            bgp.restore_director(prefix, state, victim, [bgp.VIP])
            bgp.wait_nexthops(prefix, bgp.VIP, hops, wait=30)
            back.append(round(time.monotonic() - t0, 3))
            t0 = time.monotonic()
            bgp.announce(prefix, victim, [])
            bgp.wait_nexthops(prefix, bgp.VIP, hops[:-1], poll=0.005)
            graceful.append(round(time.monotonic() - t0, 3))
            bgp.announce(prefix, victim, [bgp.VIP])
            bgp.wait_nexthops(prefix, bgp.VIP, hops, wait=30)
        return {"timers": bgp.Timers(bfd=bfd).__dict__, "crash_withdrawal_s": crash,
                "graceful_withdrawal_s": graceful, "restored_next_hop_s": back}
    finally:
        bgp.down(prefix)


def reshuffle(prefix: str, n: int, flows: int) -> dict[str, Any]:
    """For `flows` fixed TCP flows, the router's next hop with all `n` directors, after
    each one's withdrawal, and after its return: the spread and the shares that moved."""
    try:
        info = bgp.up(prefix, n, announce_laddrs=False)
        hops = [d["addr"] for d in info["directors"]]
        bgp.wait_nexthops(prefix, bgp.VIP, hops, wait=30)
        bgp_traffic.add_client(prefix)
        sports = bgp_traffic.flows(flows)
        full = bgp_traffic.router_choice(prefix, sports)
        out: dict[str, Any] = {"flows": flows, "spread": dict(Counter(full.values()))}
        for d in info["directors"]:
            bgp.announce(prefix, d["name"], [])
            bgp.wait_nexthops(prefix, bgp.VIP, [h for h in hops if h != d["addr"]])
            less = bgp_traffic.router_choice(prefix, sports)
            bgp.announce(prefix, d["name"], [bgp.VIP])
            bgp.wait_nexthops(prefix, bgp.VIP, hops)
            again = bgp_traffic.router_choice(prefix, sports)
            out[f"withdraw_{d['name']}"] = bgp_traffic.moved(full, less)
            out[f"return_{d['name']}"] = {**bgp_traffic.moved(less, again),
                                          "same_as_before": again == full}
        return out
    finally:
        bgp.down(prefix)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--directors", type=int, default=3)
    ap.add_argument("--flows", type=int, default=3000)
    ap.add_argument("--prefix", default="clbench")
    a = ap.parse_args(argv)
    out = {"bfd": withdrawal(a.prefix, a.runs, a.directors, True),
           "hold_timer": withdrawal(a.prefix, a.runs, a.directors, False),
           "reshuffle": reshuffle(a.prefix, a.directors, a.flows)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
