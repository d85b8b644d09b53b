"""The report's sections for the kernel fast path: the four forwarding paths side by side
(`kpath`) and tandem's own memory per kernel-forwarded connection (`kmem`)."""
from __future__ import annotations

from typing import Any

#: the summary rows these sections add (key, what)
HEADLINE = [
    ("kernel_tput_ratio_1", "kernel mode / plain nftables NAT, iperf3 throughput, 1 TCP stream"),
    ("kernel_tput_ratio_4", "the same, 4 TCP streams"),
    ("kernel_pps_ratio", "the same, established UDP packets/s"),
    ("kernel_cps_ratio", "the same, new TCP connections/s"),
    ("kernel_node_cpu_us_per_conn", "tandem's own CPU per connection in kernel mode (µs, user + system)"),
    ("kernel_bytes_per_conn", "tandem's own memory per kernel-forwarded connection at 1M (bytes)"),
    ("conntrack_objsize", "the kernel's nf_conntrack slab object, on top (bytes)"),
]

PATH_LABELS = {
    "direct": "(a) direct: routed through a, no NAT, no conntrack",
    "nft_nat": "(b) plain nftables dnat + snat on a",
    "kernel": "(c) tandem, `forwarding = \"kernel\"`",
    "engine": "(d) tandem, `forwarding = \"engine\"`",
}
METRIC_LABELS = {
    "tput_1": "iperf3, 1 stream, Gbit/s",
    "tput_4": "iperf3, 4 streams, Gbit/s",
    "udp_pps": "established UDP, packets/s at rs1",
    "cps": "new TCP connections/s",
}


def render_kpath(r: dict[str, Any] | None, fmt, table, err) -> str:
    lines = ["## Kernel fast path beside plain NAT (`kpath`)", ""]
    e = err(r)
    if e:
        return "\n".join(lines + [e, ""])
    assert r is not None
    paths = list(PATH_LABELS)
    lines += [f"All four paths set up at once in one lab and measured in {r.get('rounds')} "
              "interleaved rounds (order rotated each round), best of the rounds; each ends at "
              f"{r.get('real_server')} over the same hops (client, router, director a, rs1). "
              f"Placement: {r.get('placement')}. iperf3 {fmt(r.get('iperf_seconds'))} s after a "
              f"1 s omitted start; UDP: {r.get('udp')}; connections: {r.get('cps')}, "
              f"{fmt(r.get('window_seconds'))} s windows. Load average at start: "
              + ", ".join(f"{x:.2f}" for x in r.get("loadavg_at_start") or []) + ".", ""]
    best, ratios, samples = r.get("best") or {}, r.get("ratios") or {}, r.get("samples") or {}
    rows = []
    for m, label in METRIC_LABELS.items():
        for p in paths:
            v = (best.get(m) or {}).get(p)
            ratio = "1 (base)" if p == "nft_nat" else fmt((ratios.get(m) or {}).get(p))
            rows.append([label if p == paths[0] else "", PATH_LABELS[p], v, ratio,
                         ", ".join(fmt(x) for x in (samples.get(m) or {}).get(p, []))])
    lines += [table(["measure", "path", "best", "/ (b)", "samples"], rows), ""]
    checks = r.get("checks") or {}
    lines += ["Targets for (c)/(b): " + "; ".join(
        f"{METRIC_LABELS[m]} {fmt(c.get('ratio'))} ({c.get('target')}: "
        f"{ {True: 'pass', False: 'miss', None: 'not measured'}[c.get('pass')]})"
        for m, c in checks.items()) + ".", ""]
    cpu = r.get("kernel_node_cpu_us_per_conn")
    if cpu is not None:
        lines += [f"tandem's node in kernel mode, its own CPU per new connection (user + system "
                  f"over the kernel path's connection windows, lowest of the rounds): {fmt(cpu)} µs "
                  "(samples: " + ", ".join(fmt(x) for x in r.get("kernel_node_cpu_us_per_conn_samples") or [])
                  + ").", ""]
    node = (r.get("node_after") or {})
    k = node.get("kernel") or {}
    if k:
        lines += [f"The node after the run: RSS {fmt(node.get('rss_kb'))} KiB, {fmt(k.get('flows'))} "
                  f"kernel flows in its view, {fmt(k.get('events'))} conntrack events read, "
                  f"{fmt(k.get('overruns'))} overruns repaired by {fmt(k.get('resyncs'))} dumps.", ""]
    return "\n".join(lines)


def render_kmem(r: dict[str, Any] | None, fmt, table, err) -> str:
    lines = ["## tandem's memory per kernel-forwarded connection (`kmem`)", ""]
    e = err(r)
    if e:
        return "\n".join(lines + [e, ""])
    assert r is not None
    rs, tr = r.get("rss") or {}, r.get("traced") or {}
    slab = r.get("conntrack_slab") or {}
    lines += [f"Method: {r.get('method')} (`python -m bench.kmem`).", "",
              table(["measure", "value"], [
                  [f"RSS delta per connection, {fmt(rs.get('flows'))} flows (bytes)", rs.get("bytes_per_conn")],
                  ["  fill: events decoded and applied per second", rs.get("events_per_s")],
                  [f"tracemalloc, {fmt(tr.get('flows'))} flows, held per connection (bytes)", tr.get("bytes_per_conn")],
                  *[[f"  allocated in `{f}`", v] for f, v in (tr.get("by_file") or {}).items()],
                  ["kernel: `nf_conntrack` slab object (bytes; extensions and hash bucket on top)",
                   slab.get("objsize")],
              ]), ""]
    return "\n".join(lines)
