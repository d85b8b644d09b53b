"""docs/benchmarks.md from a `tandem bench` result.

Everything is generated except the section between HAND_BEGIN and HAND_END,
which is carried over from the file being replaced (the analysis of where the
time goes is written by a person, from a profile, not by the benchmark).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import report_cluster, report_kpath, report_toolchain

HAND_BEGIN = "<!-- hand-written: begin (kept by `tandem bench --write`) -->"
HAND_END = "<!-- hand-written: end -->"
HAND_PLACEHOLDER = ("## Where the time goes\n\n"
                    "(Hand-written analysis of the profile below goes here; `tandem bench --write` "
                    "keeps this section as it is.)\n")

LABELS = {
    "forward_ratio": "NFQUEUE forward ratio (tandem / bare accept)",
    "conn_rate_ratio": "connection rate ratio (tandem / kernel NAT)",
    "lookup_cost_ratio_1m_vs_1k": "per-packet cost, 1M vs 1k connections",
    "bytes_per_conn": "memory per connection (bytes)",
    "sync_lag_p99_ms": "sync lag p99 (ms)",
    "takeover_ms_max": "takeover max, 100 ms adverts (ms)",
    "takeover_ms_p50_10ms": "takeover p50, 10 ms adverts (ms)",
    "takeover_ms_max_10ms": "takeover max, 10 ms adverts (ms)",
}

HEADLINE = [
    ("nfq_ceiling_pps", "bare NFQUEUE listener (accept only), packets/s"),
    ("forward_pps", "tandem node, established UDP, packets/s"),
    ("forward_ratio", "forward_pps / nfq_ceiling_pps"),
    ("forward_ratio_per_cpu_s", "the same, from verdicts per CPU-second of each listener"),
    ("engine_pps_inprocess", "engine alone, in process, packets/s"),
    ("lookup_cost_ratio_1m_vs_1k", "per-packet cost at 1M / at 1k connections, each packet to a random connection"),
    ("lookup_cost_ratio_hot_set", "the same, packets to a hot set of 1,000 of the 1M connections"),
    ("bytes_per_conn", "memory per connection at 1M (bytes)"),
    ("direct_cps", "connections/s straight to the real servers"),
    ("kernel_nat_cps", "connections/s through nftables FULLNAT"),
    ("conn_rate_cps", "connections/s through tandem"),
    ("conn_rate_ratio", "conn_rate_cps / kernel_nat_cps"),
    ("sync_entries_per_s", "sync entries/s applied on the backup"),
    ("sync_lag_p99_ms", "sync lag p99 (ms)"),
    ("takeover_ms_p50", "takeover p50, 100 ms adverts (ms)"),
    ("takeover_ms_max", "takeover max, 100 ms adverts (ms)"),
    ("takeover_ms_p50_10ms", "takeover p50, 10 ms adverts (ms)"),
    ("takeover_ms_max_10ms", "takeover max, 10 ms adverts (ms)"),
    ("takeover_ms_max_10ms_sync_loss", "takeover max, 10 ms adverts, 20 % of sync lost (ms)"),
    ("vrrp_takeover_ms_max", "new master holds the addresses, max, 100 ms adverts (ms)"),
    ("vrrp_takeover_ms_max_10ms", "the same, 10 ms adverts (ms)"),
    ("gap_ms_max", "longest silence of a connection across a kill, all drills (ms)"),
    ("health_down_s_max", "stopped real server out of scheduling after, max (s; fall 3 x 0.5 s)"),
    ("health_up_s_max", "restarted real server back after, max (s; rise 2 x 0.5 s)"),
    *report_kpath.HEADLINE,
    *report_cluster.HEADLINE,
    *report_toolchain.HEADLINE,
]


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def mark(p: bool | None) -> str:
    return {True: "✅ pass", False: "❌ miss", None: "report"}[p]


def table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |")
    return "\n".join(out)


def summary_table(res: dict[str, Any]) -> str:
    rows = []
    for key, label in HEADLINE:
        t = res.get("targets", {}).get(key)
        rows.append([f"`{key}`", label, fmt(res.get(key)), t["target"] if t else "",
                     mark(t["pass"]) if t else ""])
    return table(["key", "what", "value", "target", ""], rows)


def _section(res: dict[str, Any], name: str) -> dict[str, Any] | None:
    return (res.get("results") or {}).get(name)


def _err(r: dict[str, Any] | None) -> str | None:
    if r is None:
        return "not run in this invocation."
    if r.get("error"):
        return f"**error:** `{r['error']}`"
    return None


def render_nfq(r: dict[str, Any]) -> str:
    lines = ["## Packet path through NFQUEUE (`nfq`)", ""]
    e = _err(r)
    if e:
        return "\n".join(lines + [e, ""])
    lines += [f"Placement: {r.get('placement')}. {r.get('flows')} UDP flows, "
              f"{r.get('payload_bytes')}-byte payloads. Rate = verdicts the kernel counted "
              "(`/proc/net/netfilter/nfnetlink_queue`) over a steady window; best of "
              f"{len(r.get('ceiling_samples_pps') or [])} alternating rounds.", ""]
    rows = []
    g = r.get("generator_only") or {}
    rows.append(["generator alone (dropped in a's raw PREROUTING)", g.get("pps"), "", "", "", "", ""])

    def row(label: str, x: dict[str, Any], samples: list | None) -> list[Any]:
        return [label, x.get("pps"), x.get("pps_per_cpu_s"), (x.get("generator") or {}).get("pps"),
                x.get("queue_dropped_per_s"), " / ".join(f"{c:.0%}" for c in x.get("cpu_busy") or []),
                ", ".join(fmt(v) for v in samples or [])]

    rows.append(row("**ceiling**: bare listener, `accept()` only", r.get("ceiling") or {},
                    r.get("ceiling_samples_pps")))
    rows.append(row("**tandem node** (asyncio adapter + engine)", r.get("tandem") or {},
                    r.get("forward_samples_pps")))
    for v, x in (r.get("variants") or {}).items():
        rows.append(row(f"variant `{v}`: {x.get('listener', '')}", x, x.get("samples_pps")))
    lines.append(table(["listener", "verdicts/s", "per CPU-second of the listener", "offered/s",
                        "queue-full drops/s", "CPU busy (0 / 1)", "samples"], rows))
    lines += ["", "Queue-full drops show that the listener, not the generator, was the limit. "
                  "*Per CPU-second*: verdicts divided by the listener process's own CPU time, the "
                  "rate with a core to itself; ratio on that basis: "
                  f"{fmt(r.get('forward_ratio_per_cpu_s'))}.", ""]
    return "\n".join(lines)


def render_engine(r: dict[str, Any]) -> str:
    lines = ["## Engine alone, in process (`engine`)", ""]
    e = _err(r)
    if e:
        return "\n".join(lines + [e, ""])
    lines += [table(["measure", "value"], [
        ["established UDP client->VIP, packets/s (best of N)", r.get("engine_pps_inprocess")],
        ["  µs per packet", r.get("engine_us_per_packet")],
        ["established UDP real server->laddr, packets/s", r.get("engine_pps_inprocess_reply")],
        ["new UDP connection (first packet, scheduler), µs", r.get("engine_new_conn_us")],
        ["whole short TCP connection (SYN .. last ACK, 8 packets both ways), µs", r.get("engine_tcp_conn_us")],
        ["  the same with the default sync policy and a real sender, µs (sync's part)",
         f"{fmt(r.get('engine_tcp_conn_sync_us'))} ({fmt(r.get('sync_tcp_conn_us'))}; "
         f"{fmt(r.get('sync_entries_per_tcp_conn'))} entries, "
         f"{fmt(r.get('sync_datagrams_per_tcp_conn'))} messages a connection)"],
        [f"per packet with {fmt((r.get('lookup_table_sizes') or [0, 0])[0])} connections, µs",
         r.get("lookup_us_per_packet_1k")],
        [f"per packet with {fmt((r.get('lookup_table_sizes') or [0, 0])[1])} connections, µs",
         r.get("lookup_us_per_packet_1m")],
        ["  ratio (each packet to a random connection; interleaved rounds, best of each)",
         r.get("lookup_cost_ratio_1m_vs_1k")],
        [f"per packet with {fmt((r.get('lookup_table_sizes') or [0, 0])[1])} connections, packets to "
         "a hot set of 1,000 of them, µs", r.get("lookup_us_per_packet_1m_hot_set")],
        ["  ratio (hot set)", r.get("lookup_cost_ratio_hot_set")],
        ["memory per connection (RSS delta)", r.get("bytes_per_conn")],
        ["memory per connection (tracemalloc, cross-check)", (r.get("memory") or {}).get("bytes_per_conn_tracemalloc")],
        ["  the same with vaddr/laddr/daddr/dport shared objects",
         (r.get("memory") or {}).get("bytes_per_conn_tracemalloc_shared_addrs")],
        ["table fill via `apply_synced`, connections/s", r.get("fill_conns_per_s_apply_synced")],
        ["objects the garbage collector tracks with the big table", r.get("gc_tracked_objects_at_table")],
        ["full `gc.collect()` with the big table, ms", r.get("gc_full_collect_ms_at_table")],
        ["  the same after `gc.freeze()`, ms", r.get("gc_full_collect_ms_after_freeze")],
        ["automatic full collections while the table filled / longest, ms",
         f"{fmt(r.get('gc_auto_full_collections_during_fill'))} / {fmt(r.get('gc_auto_full_pause_ms_max'))}"],
    ]), "", f"Memory method: {r.get('bytes_per_conn_method')}.", ""]
    mem = r.get("memory") or {}
    if mem.get("object_sizes"):
        rows = [[k, v] for k, v in mem["object_sizes"].items()]
        rows.append(["**sum of the objects one connection owns**", mem.get("object_sizes_sum")])
        lines += ["Objects owned by one connection (`sys.getsizeof`, bytes; dict slots for the two "
                  "keys, the timer-wheel slot and allocator overhead come on top):", "",
                  table(["object", "bytes"], rows), ""]
    sp = r.get("split") or {}
    if sp.get("split_us"):
        lines += [f"Per-packet split (established inbound UDP, {sp.get('us_per_packet')} µs/packet; "
                  "each part timed alone over the same packets):", "",
                  table(["part", "µs/packet", "share"],
                        [[k, v, f"{v / sp['us_per_packet']:.0%}"] for k, v in sp["split_us"].items()]),
                  ""]
    px = r.get("proxy_v2_vs_plain") or {}
    if px.get("plain"):
        tcp = [px.get(k) or {} for k in ("plain", "proxy_v2", "toa")]
        rows = [[f"TCP {label}"] + [m.get(k) for m in tcp]
                for label, k in (("client data in before the server's first byte (TOA: option in)",
                                  "early_data_in_us"),
                                 ("client data in (seq shifted; TOA: nothing left)", "data_in_us"),
                                 ("server ACK + SACK block out (ack, edges shifted back)", "sack_ack_out_us"))
                if any(m.get(k) for m in tcp)]
        rows += [[f"UDP {label}", (px.get("udp_plain") or {}).get(k), (px.get("udp_proxy_v2") or {}).get(k), None]
                 for label, k in (("client datagram in (header prepended)", "dgram_in_us"),
                                  ("server reply out (unchanged)", "reply_out_us"))
                 if px.get("udp_plain")]
        lines += [f"A PROXY-v2 service next to a plain one and a TOA one, measured in the same run "
                  f"(`bench.proxy`, {fmt(px.get('flows'))} "
                  f"established flows; {px.get('packet')}; {px.get('udp_packet', '')}), µs per packet:", "",
                  table(["packet", "plain", "proxy-v2", "toa"], rows), ""]
    if sp.get("profile_top"):
        lines += [f"cProfile of `Engine.handle` over {fmt(sp.get('profile_packets'))} packets "
                  "(shares of total profiled time; the profiler inflates call overhead):", "",
                  table(["function", "calls/packet", "own time", "incl. callees"],
                        [[f"`{x['function']}`", x["calls_per_packet"], f"{x['tottime_share']:.0%}",
                          f"{x['cumtime_share']:.0%}"] for x in sp["profile_top"]]), ""]
    return "\n".join(lines)


def render_conn(r: dict[str, Any]) -> str:
    lines = ["## New connections per second (`conn_rate`)", ""]
    e = _err(r)
    if e:
        return "\n".join(lines + [e, ""])
    lines += [f"One connection: {r.get('connection')}. Generator: {r.get('generator')}; servers: "
              f"{r.get('servers')}; tandem's node on CPU {r.get('director_cpu')}. Best of "
              f"{len((r.get('samples_cps') or {}).get('tandem') or [])} alternating rounds.", ""]
    rows = []
    for key, label in (("direct", "direct: director a's namespace -> the real servers"),
                       ("kernel_nat", "kernel nftables FULLNAT on a (dnat + snat)"),
                       ("tandem", "tandem node on a")):
        x = r.get(key) or {}
        lat = x.get("latency_ms") or {}
        errs = sum((x.get("errors") or {}).values())
        rows.append([label, x.get("cps"), f"{fmt(lat.get('p50'))} / {fmt(lat.get('p99'))}", errs,
                     " / ".join(f"{c:.0%}" for c in x.get("cpu_busy") or []),
                     ", ".join(fmt(s) for s in (r.get("samples_cps") or {}).get(key, []))])
    lines.append(table(["path", "connections/s", "latency p50 / p99 ms", "errors",
                        "CPU busy (0 / 1)", "samples"], rows))
    lines.append("")
    if r.get("conn_rate_node_cpu_us") is not None:
        lines += [f"The tandem node's own CPU (user + system, its verdicts' forwarding included) "
                  f"per connection: {fmt(r['conn_rate_node_cpu_us'])} µs (lowest of the rounds: "
                  + ", ".join(fmt(x) for x in (r.get("samples_cps") or {})
                              .get("tandem_node_cpu_us_per_conn", []))
                  + "). The rate follows the share of CPU 1 the node gets; this does not.", ""]
    return "\n".join(lines)


def render_sync(r: dict[str, Any]) -> str:
    lines = ["## Sync under steady new connections (`sync`)", ""]
    e = _err(r)
    if e:
        return "\n".join(lines + [e, ""])
    load = r.get("load") or {}
    lines += [table(["measure", "value"], [
        ["offered new connections/s through A (achieved)", f"{fmt(r.get('rate_cps'))} ({fmt(load.get('cps'))})"],
        ["entries/s applied on B", r.get("sync_entries_per_s")],
        ["entries per new connection (entries/s over achieved connections/s)", r.get("entries_per_conn")],
        ["entries per DATA message", r.get("entries_per_message")],
        ["lag p50 / p99 / max, ms (B's receiver, per message)",
         f"{fmt(r.get('sync_lag_p50_ms'))} / {fmt(r.get('sync_lag_p99_ms'))} / {fmt(r.get('sync_lag_max_ms'))}"],
        ["an entry's delay, p99 bound (lag + 20 ms flush delay), ms", r.get("sync_entry_delay_p99_ms_bound")],
        ["lag samples / DATA messages in the window", f"{fmt(r.get('lag_samples'))} / {fmt(r.get('data_messages_in_window'))}"],
        ["seqs still missing on B at the end", r.get("missing_on_b")],
        ["B restarted: seconds until it holds A's table again (connections)",
         f"{fmt(r.get('resync_s'))} ({fmt(r.get('resync_conns'))})"],
        ["connections on A / on B at the end",
         f"{fmt((r.get('conns_a') or {}).get('total'))} / {fmt((r.get('conns_b') or {}).get('total'))}"],
    ]), ""]
    return "\n".join(lines)


def render_health(r: dict[str, Any]) -> str:
    lines = ["## Health checks (`health`)", ""]
    e = _err(r)
    if e:
        return "\n".join(lines + [e, ""])
    lines += [f"A TCP check every {fmt(r.get('interval_s'))} s (fall {r.get('fall')}, rise {r.get('rise')}) "
              "on each real server of one node; rs2's echo server stopped, then started again, "
              "each transition read from the node's `/services`.", "",
              table(["transition", "by design, s", "p50 / max, s", "samples, s"], [
                  ["stopped -> down (out of scheduling)", r.get("down_by_design_s"),
                   f"{fmt(r.get('health_down_s_p50'))} / {fmt(r.get('health_down_s_max'))}",
                   ", ".join(fmt(v) for v in r.get("health_down_s") or [])],
                  ["started -> up (scheduled again)", r.get("up_by_design_s"),
                   f"{fmt(r.get('health_up_s_p50'))} / {fmt(r.get('health_up_s_max'))}",
                   ", ".join(fmt(v) for v in r.get("health_up_s") or [])],
              ]), ""]
    if r.get("errors"):
        lines += ["Rounds that did not finish: " + "; ".join(f"`{x}`" for x in r["errors"]), ""]
    return "\n".join(lines)


def render_takeover(r: dict[str, Any]) -> str:
    lines = ["## Failover drills (`takeover`)", ""]
    e = _err(r)
    if e:
        return "\n".join(lines + [e, ""])
    variants = (("advert_100ms", "100 ms (default)"), ("advert_10ms", "10 ms"),
                ("advert_10ms_sync_loss", "10 ms, 20 % sync lost"))
    rows = []
    for key, label in variants:
        x = r.get(key)
        if not x:
            continue
        rows.append([label, x.get("drills"), f"{fmt(x.get('takeover_ms_p50'))} / {fmt(x.get('takeover_ms_max'))}",
                     f"{fmt(x.get('vrrp_takeover_ms_p50'))} / {fmt(x.get('vrrp_takeover_ms_max'))}",
                     x.get("master_down_ms"),
                     f"{fmt(x.get('gap_ms_p99_max'))} / {fmt(x.get('gap_ms_max'))}",
                     f"{fmt(x.get('survived_min'))}/{fmt(x.get('conns_per_drill'))}",
                     f"{fmt(x.get('reset_total'))} / {fmt(x.get('stalled_total'))}",
                     ", ".join(fmt(v) for v in x.get("takeover_ms") or [])])
    lines += ["Kill drills (`lab.drill.run(fault=\"kill\")` on the master, each followed by a "
              "restore drill), 150 connections echoing every 20 ms. *takeover* = fault -> first "
              "echo through the new master; *VRRP* = fault -> new master holds the addresses; "
              "*Master_Down* = 3 x advert + B's skew (RFC 5798), what VRRP waits by design; "
              "*gap* = a connection's longest silence ending after the fault.", "",
              table(["adverts", "drills", "takeover p50 / max ms", "VRRP p50 / max ms",
                     "Master_Down ms", "gap p99 / max ms (worst drill)", "min survived",
                     "resets / stalls", "takeover samples ms"], rows),
              ""]
    rs = [(r.get(k) or {}) for k, _ in variants if r.get(k)]
    lines += ["Failback (restore drills, A restarted and preempting): minimum survived "
              + ", ".join(f"{fmt(x.get('restore_survived_min'))}/{fmt(x.get('restore_conns'))} "
                          f"({fmt(x.get('restore_reset_total'))} resets)" for x in rs)
              + " (" + " / ".join(label for k, label in variants if r.get(k)) + ").", ""]
    aside = [(k, d) for k, _ in variants for d in (r.get(k) or {}).get("set_aside", [])]
    if aside:
        lines += ["Set aside (another drill was run instead): "
                  + "; ".join(f"{k}: {d.get('set_aside') or 'the fault landed too late in the window'}"
                              f" (fault {fmt(d.get('fault_offset_s'))} s into the window, "
                              f"takeover {fmt(d.get('takeover_ms'))}, VRRP {fmt(d.get('vrrp_takeover_ms'))})"
                              for k, d in aside) + ".", ""]
    errs = [e for k, _ in variants for e in (r.get(k) or {}).get("errors", [])]
    if errs:
        lines += ["Drill errors: " + "; ".join(f"`{e}`" for e in errs), ""]
    return "\n".join(lines)


def render(res: dict[str, Any], hand: str | None = None) -> str:
    m = res.get("machine") or {}
    act = res.get("activity_at_start") or {}
    others = [p for p in act.get("lab_prefixes_present", []) if not p.startswith("tb")]
    head = [
        "# Benchmarks",
        "",
        "<!-- Generated by `tandem bench --write`, except the hand-written section. -->",
        "",
        f"- command: `{res.get('command')}`" + (" (quick)" if res.get("quick") else ""),
        f"- date: {res.get('date')} (total {fmt(res.get('seconds'))} s)",
        f"- machine: {m.get('cpu')}, {m.get('cores')} cores, {fmt(m.get('mem_mb'))} MB, Linux {m.get('kernel')}, "
        f"{m.get('implementation')} {m.get('python')}, python-netfilterqueue {m.get('netfilterqueue')}",
        f"- load average at start: {', '.join(f'{x:.2f}' for x in m.get('loadavg_at_start') or [])}"
        + (f"; other labs running meanwhile: {', '.join(others)}" if others else ""),
        "",
        "A benchmark, not a test: targets are marked, and a miss is explained below, not hidden.",
        "",
        "## Summary",
        "",
        summary_table(res),
        "",
    ]
    body = [render_nfq(_section(res, "nfq")), render_engine(_section(res, "engine")),
            render_conn(_section(res, "conn_rate")),
            report_kpath.render_kpath(_section(res, "kpath"), fmt, table, _err),
            report_kpath.render_kmem(_section(res, "kmem"), fmt, table, _err),
            render_sync(_section(res, "sync")),
            render_health(_section(res, "health")), render_takeover(_section(res, "takeover")),
            report_cluster.render_cluster(_section(res, "cluster"), fmt, table, _err),
            report_toolchain.render_toolchain(_section(res, "toolchain"), fmt, table, _err)]
    hand = hand if hand is not None else HAND_PLACEHOLDER
    return "\n".join(head + body + [HAND_BEGIN, hand.strip("\n"), HAND_END, ""])


def hand_written(text: str) -> str | None:
    """The hand-written section of an existing report, if it has one."""
    a, b = text.find(HAND_BEGIN), text.find(HAND_END)
    if a < 0 or b < a:
        return None
    return text[a + len(HAND_BEGIN):b].strip("\n")


def write(path: str | Path, res: dict[str, Any]) -> None:
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    text = render(res, hand_written(old))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
