"""tandem in kernel mode against the standard toolchain pair, drilled side by side.

    python -m bench.toolchain [--quick]      (or: tandem bench --only toolchain)

Two pairs run at once on two labs of the same topology (lab.topology): tandem's
(prefix PREFIXES["tandem"], its kernel-mode service KERNEL_VIP:80) and the toolchain's
(prefix PREFIXES["toolchain"], lab.toolchain: nftables dnat + snat, keepalived VRRPv3,
conntrackd FTFW committed by keepalived's notify hook; VIP:80).  Both use 100 ms adverts,
the same VRRP priorities, the same client namespace's traffic tool and the same figures:
lab.drill.run(fault="kill") on the master (links down, then SIGKILL), CONNS connections
each writing a numbered line every INTERVAL s.

Scenarios (SCENARIOS): a kill with 200 established connections; young connections (the
fault right after the last one opened, YOUNG_LEAD); young connections with SYNC_LOSS % of
the sync datagrams dropped at both directors of both pairs (lab.faults.sync_loss: the
toolchain's conntrackd syncs on tandem's port, so the one rule drops both alike).

The drills alternate between the pairs (tandem first in even rounds, the toolchain first
in odd ones), so a busy spell of the shared box hits both; after each drill the killed
director is restored (not measured) and preempts again.

The figures per pair and scenario: takeover (fault -> first echo through the new master,
p50 / max over the drills), the VRRP takeover (-> the new master holds the addresses),
the longest silence of a held connection, and survival (kept / total, resets, stalls).
`verdict` says per scenario whether tandem matches or beats the toolchain on each.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Any

from bench import common
from bench.takeover import _valid

PREFIXES = {"tandem": "tbtk", "toolchain": "tbtc"}
PAIRS = tuple(PREFIXES)
CONNS = 200
INTERVAL = 0.02
ADVERT = 0.1
SYNC_LOSS = 20
#: seconds of traffic before the fault: established connections, and young ones (the
#: fault follows the last connection's opening at once; its age then is the fault step's)
OLD_LEAD = 1.0
YOUNG_LEAD = 0.0
DURATION = 3.0
#: takeover "matches" when tandem's is at most this much above the toolchain's
#: (relative, and at least MATCH_MS): the two sit on the same TCP retransmission step
MATCH_SHARE = 0.05
MATCH_MS = 20.0
#: (key, what, lead s, sync loss %, share of the drills)
SCENARIOS = (
    ("kill_200", "kill, 200 established connections", OLD_LEAD, 0, 1.0),
    ("young", "kill, connections opened just before", YOUNG_LEAD, 0, 1.0),
    ("young_sync_loss", f"kill, young connections, {SYNC_LOSS} % of sync dropped", YOUNG_LEAD,
     SYNC_LOSS, 1.5),
)


def _pair(which: str):
    """The pair lab.drill.run drives: tandem's through its kernel-mode service (KERNEL_VIP),
    or the toolchain's (VIP)."""
    from lab.drill_pairs import LabPair
    from lab.plan import KERNEL_VIP
    from lab.toolchain import ToolchainPair
    if which == "toolchain":
        return ToolchainPair(PREFIXES[which])
    pair = LabPair(PREFIXES[which])
    pair.vip = KERNEL_VIP
    return pair


def _restore(which: str) -> None:
    from lab import toolchain, topology
    p = PREFIXES[which]
    if which == "toolchain":
        toolchain.restore(p)
        return
    topology.fault(p, "a", "restore")
    topology.wait_role(p, "a", "master", 20)
    topology.wait_role(p, "b", "backup", 20)


def _drill(which: str, lead: float) -> dict[str, Any]:
    from lab import drill
    k = drill.run(PREFIXES[which], fault="kill", conns=CONNS, duration=DURATION, lead=lead,
                  interval=INTERVAL, pair=_pair(which))
    k.pop("echo_bins_10ms", None)
    k["set_aside"], k["fault_offset_s"] = _valid(k, DURATION)
    if k["fault_offset_s"] is not None and k.get("connect_seconds") is not None:
        # the oldest connection opened at most connect_seconds before hold_started_at
        k["oldest_conn_age_s"] = round(k["fault_offset_s"] + k["connect_seconds"], 3)
    k["loadavg_1min"] = round(os.getloadavg()[0], 2)
    return k


KEEP = ("takeover_ms", "vrrp_takeover_ms", "survived", "reset", "stalled", "gap_ms", "max_gap_ms",
        "dual_master_ms", "new_master", "fault_offset_s", "connect_seconds", "oldest_conn_age_s",
        "loadavg_1min", "set_aside")


def summarize(kills: list[dict[str, Any]], aside: list[dict[str, Any]],
              errors: list[str]) -> dict[str, Any]:
    """One pair's figures over one scenario's drills.  Timing is taken from the drills that
    measured a takeover (`kills`); survival from every drill, those set aside included (a
    drill set aside for its timing still lost what it lost)."""
    counted = kills + aside
    tk = [k["takeover_ms"] for k in kills if k.get("takeover_ms") is not None]
    vr = [k["vrrp_takeover_ms"] for k in kills if k.get("vrrp_takeover_ms") is not None]
    gaps = [k["max_gap_ms"] for k in counted if k.get("max_gap_ms") is not None]
    ages = [k["oldest_conn_age_s"] for k in counted if k.get("oldest_conn_age_s") is not None]
    kept = sum(k["survived"] for k in counted)
    total = CONNS * len(counted)
    return {
        "drills": len(counted),
        "timed_drills": len(kills),
        "takeover_ms": tk,
        "takeover_ms_p50": round(statistics.median(tk), 1) if tk else None,
        "takeover_ms_max": max(tk) if tk else None,
        "vrrp_takeover_ms_p50": round(statistics.median(vr), 1) if vr else None,
        "vrrp_takeover_ms_max": max(vr) if vr else None,
        "gap_ms_max": max(gaps) if gaps else None,
        "survived": [k["survived"] for k in counted],
        "survived_total": kept,
        "conns_total": total,
        "survived_share": round(kept / total, 4) if total else None,
        "survived_min": min((k["survived"] for k in counted), default=None),
        "reset_total": sum(k["reset"] for k in counted),
        "stalled_total": sum(k["stalled"] for k in counted),
        "oldest_conn_age_s_max": max(ages) if ages else None,
        "kills": [{key: d.get(key) for key in KEEP} for d in kills],
        "set_aside": [{key: d.get(key) for key in KEEP} for d in aside],
        "errors": errors,
    }


def _no_worse(t: float | None, base: float | None) -> bool | None:
    if t is None or base is None:
        return None
    return t <= base + max(MATCH_MS, MATCH_SHARE * base)


def verdict(tandem: dict[str, Any], toolchain: dict[str, Any]) -> dict[str, Any]:
    """Does tandem match or beat the toolchain: takeover (p50 and max, within the match
    margin), survival (kept of all held connections, no fewer)."""
    takeover = [_no_worse(tandem.get(k), toolchain.get(k)) for k in ("takeover_ms_p50", "takeover_ms_max")]
    survival = None
    if tandem.get("conns_total") and toolchain.get("conns_total"):
        survival = tandem["survived_share"] >= toolchain["survived_share"]
    return {
        "takeover_matches_or_beats": None if None in takeover else all(takeover),
        "survival_matches_or_beats": survival,
        "takeover_ms_p50_difference": (None if None in (tandem.get("takeover_ms_p50"), toolchain.get("takeover_ms_p50"))
                                       else round(tandem["takeover_ms_p50"] - toolchain["takeover_ms_p50"], 1)),
        "survived_share_difference": (None if survival is None
                                      else round(tandem["survived_share"] - toolchain["survived_share"], 4)),
    }


def scenario(n: int, lead: float, loss: int) -> dict[str, Any]:
    """n kill drills of each pair, alternating, with `loss` % of sync dropped at both."""
    from lab import topology
    kills: dict[str, list] = {w: [] for w in PAIRS}
    aside: dict[str, list] = {w: [] for w in PAIRS}
    errors: dict[str, list] = {w: [] for w in PAIRS}
    for w in PAIRS:
        topology.sync_loss(PREFIXES[w], loss)
    try:
        for i in range(n):
            for w in (PAIRS if i % 2 == 0 else PAIRS[::-1]):
                try:
                    k = _drill(w, lead)
                    (aside if k["set_aside"] else kills)[w].append(k)
                except Exception as exc:  # noqa: BLE001 - counted, the next drill goes on
                    errors[w].append(f"kill {i}: {exc!r}"[:300])
                try:
                    _restore(w)
                except Exception as exc:  # noqa: BLE001
                    errors[w].append(f"restore {i}: {exc!r}"[:300])
    finally:
        for w in PAIRS:
            topology.sync_loss(PREFIXES[w], 0)
    out: dict[str, Any] = {"lead_s": lead, "sync_loss_percent": loss}
    for w in PAIRS:
        out[w] = summarize(kills[w], aside[w], errors[w])
    out["verdict"] = verdict(out["tandem"], out["toolchain"])
    return out


def run(quick: bool = False) -> dict[str, Any]:
    from lab import toolchain
    t0 = time.monotonic()
    n = 1 if quick else 4
    out: dict[str, Any] = {"conns": CONNS, "interval_s": INTERVAL, "advert_interval_s": ADVERT,
                           "duration_s": DURATION, "prefixes": dict(PREFIXES),
                           "what": {k: what for k, what, *_ in SCENARIOS}}
    with common.lab(PREFIXES["tandem"], node=True, ha=True, advert_interval=ADVERT, kernel=True):
        with toolchain.session(PREFIXES["toolchain"], advert_interval=ADVERT):
            out["versions"] = toolchain.versions()
            for key, _what, lead, loss, share in SCENARIOS:
                out[key] = scenario(max(1, round(n * share)), lead, loss)
    verdicts = [out[k]["verdict"] for k, *_ in SCENARIOS]
    flat = [v[f] for v in verdicts for f in ("takeover_matches_or_beats", "survival_matches_or_beats")]
    out["tandem_matches_or_beats_toolchain"] = None if None in flat else all(flat)
    for key, *_ in SCENARIOS:
        for w in PAIRS:
            out[f"{w}_{key}_takeover_ms_p50"] = out[key][w]["takeover_ms_p50"]
            out[f"{w}_{key}_survived_share"] = out[key][w]["survived_share"]
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run("--quick" in sys.argv), indent=1))
