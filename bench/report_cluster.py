"""The report's section for cluster mode: 3 directors against 1 behind the router's ECMP
(`cluster`, bench/cluster.py)."""
from __future__ import annotations

from typing import Any

#: the summary rows this section adds (key, what)
HEADLINE = [
    ("cluster_pps_3", "cluster of 3 directors, engine mode, UDP packets/s at the real servers"),
    ("cluster_pps_1", "the same load, 1 director (b and c drained)"),
    ("cluster_pps_ratio", "cluster_pps_3 / cluster_pps_1, measured (all directors share this machine's cores)"),
    ("cluster_projected_ratio", "3 / 1 with a core per director, from each one's packets per CPU-second and share"),
    ("cluster_cps_3", "cluster of 3 directors, new TCP connections/s"),
    ("cluster_cps_1", "the same load, 1 director"),
    ("cluster_cps_ratio", "cluster_cps_3 / cluster_cps_1, measured"),
    ("cluster_cps_projected_ratio", "the same with a core per director, from each node's CPU per connection"),
]

#: a window that forwarded this share of the offered load or more was limited by the load
GENERATOR_BOUND = 0.9
SHAPE_LABELS = {"3": "3 directors (a, b, c announce)", "1": "1 director (b, c drained)"}


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.0%}"


def _generator_bound(w: dict[str, Any] | None) -> bool:
    """The shape forwarded (nearly) all the generator offered: the load, not the directors,
    was the limit of that window."""
    return bool(w and w.get("offered_pps") and w.get("pps") is not None
                and w["pps"] >= GENERATOR_BOUND * w["offered_pps"])


def render_cluster(r: dict[str, Any] | None, fmt, table, err) -> str:
    lines = ["## Cluster: 3 directors against 1 (`cluster`)", ""]
    e = err(r)
    if e:
        return "\n".join(lines + [e, ""])
    assert r is not None
    shapes = r.get("shapes") or {}
    lines += [f"One cluster lab (`tandem lab up --cluster 3`) with a UDP service in engine "
              f"forwarding (`maglev`), the same load offered to two shapes: "
              + "; ".join(f"**{s}**: {d}" for s, d in shapes.items())
              + f". Load: {r.get('load')}. {r.get('rounds')} interleaved rounds (3, then 1), "
              f"{fmt(r.get('window_seconds'))} s each with a 1 s start left out, best of the rounds. "
              f"Placement: {r.get('placement')}. Load average at start: "
              + ", ".join(f"{x:.2f}" for x in r.get("loadavg_at_start") or []) + ".", ""]
    best, samples = r.get("best") or {}, r.get("samples_pps") or {}
    rows = []
    for s, label in SHAPE_LABELS.items():
        w = best.get(s) or {}
        rows.append([label, w.get("pps"), w.get("offered_pps"),
                     " / ".join(_pct(c) for c in w.get("cpu_busy") or []),
                     ", ".join(fmt(x) for x in samples.get(s) or [])])
    lines += [table(["shape", "packets/s at the real servers (best)",
                     "offered by the generator (its whole run)",
                     "CPU busy (0 / 1)", "samples"], rows), ""]
    split_rows = []
    for s, label in SHAPE_LABELS.items():
        for i, (d, x) in enumerate(((best.get(s) or {}).get("directors") or {}).items()):
            split_rows.append([label if i == 0 else "", d, x.get("pps"), _pct(x.get("share")),
                               _pct(x.get("cpu_share")), x.get("pps_per_cpu_s")])
    lines += ["Per director, in the best window of each shape (its queue's verdicts; its node's "
              "own CPU over the window):", "",
              table(["shape", "director", "packets/s", "share", "node CPU", "packets per CPU-second"],
                    split_rows), ""]
    lines += [f"Measured 3 / 1: **{fmt(r.get('cluster_pps_ratio'))}**. Projected with a core per "
              f"director: {fmt(r.get('cluster_projected_pps_3'))} / {fmt(r.get('cluster_projected_pps_1'))} "
              f"packets/s = **{fmt(r.get('cluster_projected_ratio'))}** (the cluster saturates when "
              "its busiest director does: the lowest of packets per CPU-second / share; the single "
              "director's packets per CPU-second).", ""]
    lines += ["What limits the measured ratio: the machine's cores. Three nodes, the generator "
              "and the router's forwarding all share them, so the cluster cannot get three times "
              "the CPU one director gets. When the 3-director shape forwards about what the "
              "generator offered, the generator (which the nodes take CPU from) was the limit, not "
              "the directors. The projection takes the cores out: it is what the per-packet cost "
              "in cluster mode (sync to N-1 peers included) and the router's uneven hash allow.", ""]
    limited = [SHAPE_LABELS[s] for s in SHAPE_LABELS if _generator_bound(best.get(s))]
    if limited:
        lines += ["In this run the generator was the limit of: " + ", ".join(limited)
                  + " (forwarded 90 % or more of what it offered).", ""]
    lines += _render_cps(r.get("cps") or {}, r, fmt, table)
    after = r.get("status_after") or {}
    if after:
        lines += ["`/status` `cluster` after the run: " + "; ".join(
            f"{d} {x.get('state')}, owns {fmt(x.get('flows_owned'))}, holds "
            f"{fmt(x.get('flows_foreign'))} of its peers'" for d, x in after.items()
            if isinstance(x, dict) and not x.get("error")) + ".", ""]
    return "\n".join(lines)


def _render_cps(c: dict[str, Any], r: dict[str, Any], fmt, table) -> list[str]:
    if not c.get("best"):
        return []
    rows = []
    us = c.get("cpu_us_per_conn") or {}
    for s, label in SHAPE_LABELS.items():
        w = c["best"].get(s) or {}
        split = ", ".join(f"{d} {_pct(x.get('share'))}" for d, x in (w.get("directors") or {}).items())
        cost = ", ".join(f"{d} {fmt(v)}" for d, v in (us.get(s) or {}).items())
        rows.append([label, w.get("cps"), sum((w.get("errors") or {}).values()), split, cost,
                     " / ".join(_pct(x) for x in w.get("cpu_busy") or []),
                     ", ".join(fmt(x) for x in (c.get("samples") or {}).get(s) or [])])
    proj = c.get("projected") or {}
    return [f"New connections/s, same rounds and shapes: {c.get('load')}.", "",
            table(["shape", "connections/s (best)", "errors", "packets per director",
                   "node CPU per connection, µs", "CPU busy (0 / 1)", "samples"], rows), "",
            f"Measured 3 / 1: **{fmt(r.get('cluster_cps_ratio'))}**. Projected with a core per "
            f"director: {fmt(proj.get('3'))} / {fmt(proj.get('1'))} connections/s = "
            f"**{fmt(r.get('cluster_cps_projected_ratio'))}** (the lowest of connections/s / "
            "node CPU share over the directors). *Node CPU per connection* is over all the "
            "cluster's connections: a director's own ones and the peers' entries it applies "
            "(each connection is synced to every peer at the SYN and when established), which is "
            "why b and c spend CPU in the 1-director shape, and why a connection costs the "
            "cluster more than one director: with N directors each one applies the entries of "
            "the other N-1, so sync bounds how far the connection rate scales. The measured ratio "
            "has the packets' limit, and more so: the generator, the line servers and every "
            "connection's kernel work share the same cores (CPU busy).", ""]

