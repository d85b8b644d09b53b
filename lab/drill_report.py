"""The drill's report: how long two masters overlapped, UDP loss inside and outside the
outage window, and the table and plot a person reads (every figure in them is a key of
the JSON report; where a figure does not exist, what happened is said instead)."""
from __future__ import annotations

from typing import Any

#: datagrams sent this long before the fault, or after the new master took the addresses,
#: still belong to the outage: in flight when the old master went, or sent before the
#: router heard the new master's gratuitous ARP
UDP_GRACE = 0.25


def overlap_ms(changes: dict[str, list[dict]], since: float) -> float:
    """Longest time both nodes held the addresses at once, from their own logs."""
    spans = {}
    for name, ch in changes.items():
        held, start = [], None
        for c in sorted(ch, key=lambda c: c["at"]):
            if c["to"] == "master" and start is None:
                start = c["at"]
            elif c["to"] != "master" and start is not None:
                held.append((start, c["at"]))
                start = None
        if start is not None:
            held.append((start, float("inf")))
        spans[name] = [(s, e) for s, e in held if e >= since]
    worst = 0.0
    names = sorted(spans)
    for i, n1 in enumerate(names):
        for n2 in names[i + 1:]:
            for s1, e1 in spans[n1]:
                for s2, e2 in spans[n2]:
                    worst = max(worst, min(e1, e2) - max(s1, s2))
    return round(worst * 1000, 1)


def udp_outage(ures: dict[str, Any], fault_at: float, takeover_at: float | None,
               interval: float) -> dict[str, Any]:
    """Split the UDP flows' lost datagrams into those of the outage window (from just
    before the fault to just after the new master took the addresses; just after the
    fault when no takeover happened) and those outside it, and count the flows that got
    echoes for datagrams sent after the window."""
    grace = max(UDP_GRACE, 5 * interval)
    w0 = fault_at - grace
    w1 = max(fault_at, takeover_at or fault_at) + grace
    inside = outside = 0
    for runs in ures.get("lost_runs", []):
        for first, last, t_first, t_last in runs:
            n = int(last - first + 1)
            step = (t_last - t_first) / (n - 1) if n > 1 else 0.0
            ins = sum(1 for j in range(n) if w0 <= t_first + j * step <= w1)
            inside += ins
            outside += n - ins
    continued = sum(1 for t in ures.get("last_answered_sent_at", []) if t is not None and t > w1)
    return {"udp_continued": continued, "udp_lost_in_outage": inside,
            "udp_lost_outside": outside, "udp_outage_window": [round(w0, 3), round(w1, 3)]}


def _ms(v: float | None, none: str) -> str:
    return f"{v} ms" if v is not None else none


def table(r: dict[str, Any]) -> str:
    g = r["gap_ms"]
    if r.get("vrrp_takeover_ms") is not None:
        took = f"{r['vrrp_takeover_ms']} ms after the fault"
    elif r.get("new_master") is None:
        took = "no node answered as master after the drill"
    elif r.get("new_master") == r.get("old_master"):
        took = f"no takeover: {r['new_master']} stayed master"
    else:
        took = "not seen in the nodes' logs"
    if r.get("takeover_ms") is not None:
        n = r.get("interrupted")
        first = f"{r['takeover_ms']} ms" + (f" ({n} connections interrupted)" if n else "")
    else:
        first = "no interruption"
    if g.get("max") is None:
        gaps = "no echoes measured"
    else:
        gaps = f"p50 {g['p50']} ms, p99 {g['p99']} ms, max {g['max']} ms"
    rows = [
        ("fault", f"{r['fault']} {r['target']}"),
        ("master", f"{r['old_master'] or 'none'} -> {r['new_master'] or 'none'}"),
        ("connections", f"{r['survived']}/{r['conns']} survived, {r['reset']} reset, {r['stalled']} stalled"),
        ("new master holds addresses", took),
        ("first echo after the fault", first),
        ("gap per connection", gaps),
        ("longest silence of the run", _ms(r.get("max_gap_ms"), "none measured")),
        ("two masters at once", "n/a (a cluster)" if r["dual_master_ms"] is None
         else f"{r['dual_master_ms']} ms"),
    ]
    if r.get("forwarding"):             # the lab's: which of its services was drilled
        rows.insert(0, ("service", f"{r['vip']} ({r['forwarding']} forwarding)"))
    if r["udp_flows"]:
        if "udp_lost_outside" in r:
            rows.append(("udp", f"{r['udp_flows']} flows, {r['udp_continued']} continued after the "
                                f"takeover; {r['udp_lost_in_outage']} datagrams lost in the outage, "
                                f"{r['udp_lost_outside']} outside it"))
        else:
            rows.append(("udp", f"{r['udp_flows']} flows, {r['udp_lost']} datagrams lost"))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


def plot(r: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    bins = r["echo_bins_10ms"]
    t = [k / 100 for k in range(len(bins))]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(t, bins, lw=0.8)
    if r.get("hold_started_at"):
        ax.axvline(r["fault_at"] - r["hold_started_at"], color="red", ls="--",
                   label=f"{r['fault']} {r['target']}")
    ax.set_xlabel("seconds")
    ax.set_ylabel("echoes per 10 ms")
    echo = (f"first echo {r['takeover_ms']} ms after the fault" if r.get("takeover_ms") is not None
            else "no interruption")
    title = f"tandem drill: {r['survived']}/{r['conns']} survived, {echo}"
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Title": title})     # the PNG says it in text too
    plt.close(fig)
