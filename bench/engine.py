"""The sans-IO engine alone: packets/s, lookup cost at 1M connections, memory per
connection, and where the time of one packet goes.

Nothing here does I/O: packets are built in memory (IPv4, correct checksums,
lab addresses) and handed to `Engine.handle(data, now)` as the NFQUEUE adapter
would.  Timing is best-of-N over whole batches of the process's own CPU time
(time.process_time): time spent descheduled by other work on a shared box does
not count, and what remains of the noise only ever makes a figure worse.
"""
from __future__ import annotations

import cProfile
import gc
import os
import pstats
import random
import socket
import struct
import sys
import time
import tracemalloc
from typing import Any

from director.config import parse
from director.engine import Engine
from proto import packet as P
from proto.consts import ASSURED, TCP, UDP
from proto.checksum import checksum, pseudo_header_sum, ones_sum
from proto.fullnat import apply

_clock = time.process_time
VIP = "198.18.0.100"
LADDRS = ["198.18.2.100", "198.18.2.101"]
#: 16 real servers: the reply tuple (rs, laddr, lport) has room for 1.9M connections
REALS = [f"198.18.2.{21 + i}" for i in range(16)]
PAYLOAD = b"tandem-bench-0001!"          # 18 bytes, as the NFQUEUE measurements (§5.1)


def config(max_conns: int = 2_000_000, reals: list[str] = REALS):
    svc = lambda proto: {
        "proto": proto, "vip": VIP, "port": 80, "scheduler": "rr", "laddrs": list(LADDRS),
        "real_servers": [{"addr": a, "port": 8080, "weight": 1} for a in reals],
    }
    return parse({"node": {"name": "bench"}, "limits": {"max_conns": max_conns},
                  "services": [svc("tcp"), svc("udp")]}, "bench")


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes = PAYLOAD) -> bytes:
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    ulen = 8 + len(payload)
    seg = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    c = ~((ones_sum(seg) + pseudo_header_sum(s, d, UDP, ulen)) % 0xFFFF) & 0xFFFF or 0xFFFF
    seg = seg[:6] + struct.pack("!H", c) + seg[8:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 0, 0x4000, 64, UDP, 0, s, d)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + seg


def ipv4_tcp(src: str, dst: str, sport: int, dport: int, flags: int, seq: int, ack: int,
             payload: bytes = b"") -> bytes:
    """An IPv4 TCP segment (20-byte header, no options) with correct checksums."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    tlen = 20 + len(payload)
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    c = ~((ones_sum(seg) + pseudo_header_sum(s, d, TCP, tlen)) % 0xFFFF) & 0xFFFF or 0xFFFF
    seg = seg[:16] + struct.pack("!H", c) + seg[18:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tlen, 0, 0x4000, 64, TCP, 0, s, d)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + seg


FIN, SYN, PSH, ACK_F = 0x01, 0x02, 0x08, 0x10


def tcp_exchanges(n: int) -> list[bytes]:
    """n short TCP connections as the conn_rate bench's generator makes them (connect,
    WHOAMI, reply, close, client first): 8 packets each, both directions.  A first engine
    learns each connection's real server and laddr:lport from its rewritten SYN; a fresh
    engine handling the same packets in the same order assigns the same."""
    eng = Engine(config(), now=0.0)
    out = []
    for i in range(n):
        caddr, cport = client_of(i)
        syn = ipv4_tcp(caddr, VIP, cport, 80, SYN, 100, 0)
        fwd = P.parse(eng.handle(syn, 1.0))
        rs, la = socket.inet_ntoa(fwd.dst), socket.inet_ntoa(fwd.src)
        lp, rp = fwd.sport, fwd.dport
        seq = [syn, ipv4_tcp(rs, la, rp, lp, SYN | ACK_F, 500, 101),
               ipv4_tcp(caddr, VIP, cport, 80, ACK_F, 101, 501),
               ipv4_tcp(caddr, VIP, cport, 80, PSH | ACK_F, 101, 501, b"WHOAMI\n"),
               ipv4_tcp(rs, la, rp, lp, PSH | ACK_F, 501, 108, b"rs1 198.18.2.100:6000\n"),
               ipv4_tcp(caddr, VIP, cport, 80, FIN | ACK_F, 108, 523),
               ipv4_tcp(rs, la, rp, lp, FIN | ACK_F, 523, 109),
               ipv4_tcp(caddr, VIP, cport, 80, ACK_F, 109, 524)]
        for p in seq[1:]:
            eng.handle(p, 1.0)
        out += seq
    return out


def tcp_conn_cost(quick: bool = False, n: int | None = None) -> dict[str, Any]:
    """Engine CPU time for whole short TCP connections (new-connection path, state
    changes, assurance, rewrites): best of N over the same prebuilt packets."""
    n = n or (300 if quick else 2000)
    pkts = tcp_exchanges(n)
    best, drops = None, 0
    for _ in range(3 if quick else 5):
        eng = Engine(config(), now=0.0)
        dt = time_batch(eng.handle, pkts, 1.0)
        drops = sum(eng.drops.values())
        best = dt if best is None else min(best, dt)
    return {"engine_tcp_conn_us": round(best / n * 1e6, 2), "tcp_conns": n,
            "tcp_packets_per_conn": len(pkts) // n, "tcp_drops": drops}


def tcp_conn_sync_cost(quick: bool = False, n: int | None = None) -> dict[str, Any]:
    """The same connections with the default sync policy and a real SyncSender (the entries
    encoded, signed and sealed; polled every 64 packets, as the node's transport would
    between batches): the engine + sync CPU per connection, and what sync adds to the
    engine alone, alternating the two (best of N each)."""
    from syncd.config import SyncConfig
    from syncd.policy import SyncPolicy, make_hook
    from syncd.sender import SyncSender
    n = n or (300 if quick else 2000)
    pkts = tcp_exchanges(n)
    key = b"bench-sync-key-0123456789abcdef!"

    def once(sync: bool) -> tuple[float, SyncSender | None]:
        eng = Engine(config(), now=0.0)
        snd = None
        if sync:
            snd = SyncSender(SyncConfig(key=key), "bench", epoch=1, key=key)
            eng.sync_hook = make_hook(SyncPolicy(), eng, snd.queue, snd.queue_packed)
        h = eng.handle
        t0 = _clock()
        for i in range(0, len(pkts), 64):
            for p in pkts[i:i + 64]:
                h(p, 1.0)
            if snd is not None:
                snd.poll(1.0)
        return _clock() - t0, snd

    best = {False: float("inf"), True: float("inf")}
    snd = None
    for _ in range(3 if quick else 5):
        for sync in (False, True):
            dt, s = once(sync)
            best[sync] = min(best[sync], dt)
            snd = s or snd
    assert snd is not None
    return {"engine_tcp_conn_sync_us": round(best[True] / n * 1e6, 2),
            "sync_tcp_conn_us": round((best[True] - best[False]) / n * 1e6, 2),
            "sync_entries_per_tcp_conn": round(snd.stats["entries_queued"] / n, 2),
            "sync_datagrams_per_tcp_conn": round(snd.stats["sent"] / n, 3)}


def client_of(i: int) -> tuple[str, int]:
    """The i-th synthetic client: 198.19.x.y (65,536 addresses) x source ports."""
    return f"198.19.{(i >> 8) & 0xFF}.{i & 0xFF}", 1024 + (i >> 16)


def fill(engine: Engine, n: int, now: float = 0.0, start: int = 0, fresh: bool = True) -> None:
    """n established UDP connections installed as sync installs them (Engine.apply_synced).

    fresh: every address and port is a new object, as a sync message decodes them
    (a backup's table); otherwise vaddr, laddr, daddr and dport are shared objects.
    Reply tuples are spread over 16 real servers x 2 laddrs x lports, so no two
    collide up to 1.9M entries."""
    packed = socket.inet_aton
    vip = packed(VIP)
    laddrs = [packed(a) for a in LADDRS]
    reals = [packed(a) for a in REALS]
    applied = engine.apply_synced
    one = 1
    for i in range(start, start + n):
        caddr, cport = client_of(i)
        if fresh:
            vaddr, laddr, daddr = packed(VIP), packed(LADDRS[(i >> 4) & 1]), packed(REALS[i & 15])
            dport = 8079 + one
        else:
            vaddr, laddr, daddr, dport = vip, laddrs[(i >> 4) & 1], reals[i & 15], 8080
        applied(proto=UDP, state=0, flags=ASSURED, caddr=packed(caddr), cport=cport,
                vaddr=vaddr, vport=80, laddr=laddr, lport=5000 + (i >> 5),
                daddr=daddr, dport=dport, timeout=300.0, now=now)


def packets_for(idx: list[int]) -> list[bytes]:
    out = []
    for i in idx:
        caddr, cport = client_of(i)
        out.append(ipv4_udp(caddr, VIP, cport, 80))
    return out


def time_batch(handle, pkts: list[bytes], now: float) -> float:
    """Seconds for one pass of handle over pkts."""
    t0 = _clock()
    for p in pkts:
        handle(p, now)
    return _clock() - t0


def engine_pps(quick: bool = False, n_flows: int = 1000, reps: int | None = None,
               rounds: int | None = None) -> dict[str, Any]:
    """Established UDP flows, client -> VIP, 18-byte payloads: best-of-N packets/s."""
    eng = Engine(config(), now=0.0)
    now = 1.0
    pkts = packets_for(list(range(n_flows)))
    # the first packet of each flow opens it through the scheduler (the slow path)
    t_new = time_batch(eng.handle, pkts, now)
    assert eng.table.count == n_flows, eng.drops
    reps = reps or (5 if quick else 20)
    rounds = rounds or (3 if quick else 7)
    batch = pkts * reps
    best = min(time_batch(eng.handle, batch, now) for _ in range(rounds))
    # the other direction, real server -> laddr, for the record
    replies = []
    for c in list(eng.table)[:n_flows]:
        replies.append(ipv4_udp(socket.inet_ntoa(c.daddr), socket.inet_ntoa(c.laddr), c.dport, c.lport))
    rbatch = replies * reps
    rbest = min(time_batch(eng.handle, rbatch, now) for _ in range(rounds))
    bad = sum(v for v in eng.drops.values())
    return {
        "engine_pps_inprocess": round(len(batch) / best),
        "engine_us_per_packet": round(best / len(batch) * 1e6, 3),
        "engine_pps_inprocess_reply": round(len(rbatch) / rbest),
        "engine_new_conn_us": round(t_new / n_flows * 1e6, 2),
        "flows": n_flows, "batch": len(batch), "rounds": rounds, "drops": bad,
    }


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def lookup_and_memory(quick: bool = False, big_n: int | None = None, small_n: int = 1000,
                      sample: int | None = None, rounds: int | None = None) -> dict[str, Any]:
    """Per-packet cost with 1,000,000 connections vs 1,000, interleaved best-of-N;
    memory per connection (RSS delta over the big fill); garbage-collector pauses.

    Three batches per round: the small table (random flows of 1,000); the big
    table, each packet to a random one of its connections (the headline: cold
    caches and TLB, the worst case); the big table, packets to 1,000 of its
    connections (a hot set: what is left is the table's own cost)."""
    big_n = big_n or (100_000 if quick else 1_000_000)
    sample = sample or (5_000 if quick else 20_000)
    rounds = rounds or (3 if quick else 9)
    rng = random.Random(1)
    t0 = time.perf_counter()
    small = Engine(config(), now=0.0)
    fill(small, small_n)
    small_pkts = packets_for([rng.randrange(small_n) for _ in range(sample)])
    big_pkts = packets_for([rng.randrange(big_n) for _ in range(sample)])
    hot = [rng.randrange(big_n) for _ in range(min(small_n, big_n))]
    hot_pkts = packets_for([rng.choice(hot) for _ in range(sample)])
    gc.collect()
    rss0 = _rss()
    big = Engine(config(), now=0.0)
    pauses: list[float] = []
    started: list[float] = []

    def on_gc(phase: str, info: dict) -> None:     # automatic full collections during the fill
        if info.get("generation") != 2:
            return
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            pauses.append((time.perf_counter() - started.pop()) * 1000)

    gc.callbacks.append(on_gc)
    try:
        tf = _clock()
        fill(big, big_n)
        fill_s = _clock() - tf
    finally:
        gc.callbacks.remove(on_gc)
    gc.collect()
    rss1 = _rss()
    assert big.table.count == big_n, big.sync_stats
    # interleaved: small, big (random), big (hot set) ... best of each
    ts, tb, th = [], [], []
    for _ in range(rounds):
        ts.append(time_batch(small.handle, small_pkts, 1.0))
        tb.append(time_batch(big.handle, big_pkts, 1.0))
        th.append(time_batch(big.handle, hot_pkts, 1.0))
    us_small, us_big, us_hot = (min(x) / sample * 1e6 for x in (ts, tb, th))
    tracked = len(gc.get_objects())
    tg = time.perf_counter()
    gc.collect()
    gc_ms = (time.perf_counter() - tg) * 1000
    gc.freeze()
    tg = time.perf_counter()
    gc.collect()
    gc_frozen_ms = (time.perf_counter() - tg) * 1000
    gc.unfreeze()
    out = {
        "lookup_cost_ratio_1m_vs_1k": round(us_big / us_small, 3),
        "lookup_cost_ratio_hot_set": round(us_hot / us_small, 3),
        "lookup_us_per_packet_1k": round(us_small, 3),
        "lookup_us_per_packet_1m": round(us_big, 3),
        "lookup_us_per_packet_1m_hot_set": round(us_hot, 3),
        "lookup_table_sizes": [small_n, big_n],
        "lookup_rounds": rounds,
        "lookup_samples_us_1k": [round(t / sample * 1e6, 3) for t in ts],
        "lookup_samples_us_1m": [round(t / sample * 1e6, 3) for t in tb],
        "lookup_samples_us_1m_hot_set": [round(t / sample * 1e6, 3) for t in th],
        "bytes_per_conn": round((rss1 - rss0) / big_n),
        "bytes_per_conn_method": f"RSS delta (/proc/self/statm, after gc.collect) over filling {big_n:,} "
                                 "UDP connections with Engine.apply_synced from freshly decoded-like "
                                 "objects, as a backup holds them",
        "fill_conns_per_s_apply_synced": round(big_n / fill_s),
        "gc_tracked_objects_at_table": tracked,
        "gc_full_collect_ms_at_table": round(gc_ms, 1),
        "gc_full_collect_ms_after_freeze": round(gc_frozen_ms, 2),
        "gc_auto_full_collections_during_fill": len(pauses),
        "gc_auto_full_pause_ms_max": round(max(pauses), 1) if pauses else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    del big, small
    gc.collect()
    return out


def _traced(n: int, fresh: bool) -> tuple[int, list]:
    eng = Engine(config(), now=0.0)
    fill(eng, 10, fresh=fresh)      # warm: services, pools, the dict's first entries
    gc.collect()
    tracemalloc.start()
    a = tracemalloc.take_snapshot()
    fill(eng, n, start=10, fresh=fresh)
    b = tracemalloc.take_snapshot()
    tracemalloc.stop()
    diff = b.compare_to(a, "filename")
    top = sorted((("/".join(d.traceback[0].filename.rsplit("/", 2)[-2:]), d.size_diff)
                  for d in diff if d.size_diff > 0), key=lambda x: -x[1])[:6]
    return sum(d.size_diff for d in diff), [[f, round(sz / n)] for f, sz in top], eng


def memory_breakdown(n: int = 20_000) -> dict[str, Any]:
    """tracemalloc over n connections (a cross-check of the RSS figure), with fresh
    objects (as sync decodes them) and with vaddr/laddr/daddr/dport shared, and
    the sizes of the objects one connection owns."""
    total, top, eng = _traced(n, True)
    shared, _top, _eng = _traced(n, False)
    c = next(iter(eng.table))
    size = sys.getsizeof
    parts = {
        f"Conn ({len(type(c).__slots__)} slots)": size(c),
        f"2 x Rewrite ({len(type(c.rw_in).__slots__)} slots)": size(c.rw_in) + size(c.rw_out),
        "Rewrite bytes (addrs, ports) x2": size(c.rw_in.addrs) + size(c.rw_in.ports)
                                           + size(c.rw_out.addrs) + size(c.rw_out.ports),
        "2 keys (13-byte bytes)": size(c.orig_key) + size(c.reply_key),
        "4 packed addresses (caddr, vaddr, laddr, daddr)": size(c.caddr) + size(c.vaddr)
                                                          + size(c.laddr) + size(c.daddr),
        "floats (expires, created, sync_endtime)": 3 * size(1.0),
        "ints > 256 (cport, lport, dport, timer_tick)": size(c.cport) + size(c.lport) + size(c.dport)
                                                        + size(c.timer_tick),
    }
    return {
        "bytes_per_conn_tracemalloc": round(total / n),
        "bytes_per_conn_tracemalloc_shared_addrs": round(shared / n),
        "tracemalloc_conns": n,
        "tracemalloc_top_files": top,
        "object_sizes": parts,
        "object_sizes_sum": sum(parts.values()),
    }


def split(quick: bool = False, n_flows: int = 1000) -> dict[str, Any]:
    """Where the time of one established inbound UDP packet goes: the parts timed
    one by one on the same packets, and a cProfile of the whole path."""
    eng = Engine(config(), now=0.0)
    pkts = packets_for(list(range(n_flows)))
    for p in pkts:
        eng.handle(p, 1.0)
    batch = pkts * (3 if quick else 10)
    rounds = 3 if quick else 11
    index = eng.index
    parsed = [P.parse(p) for p in batch]
    conns = [index[k.key] for k in parsed]

    def t_parse():
        t0 = _clock()
        parse = P.parse
        for p in batch:
            parse(p)
        return _clock() - t0

    def t_lookup():
        t0 = _clock()
        get = index.get
        for k in parsed:
            get(k.key)
        return _clock() - t0

    def t_apply():
        t0 = _clock()
        for p, k, c in zip(batch, parsed, conns):
            apply(p, k, c.rw_in)
        return _clock() - t0

    def t_loop():   # the bare iteration the others include (zip + 3 loads)
        t0 = _clock()
        for p, k, c in zip(batch, parsed, conns):
            pass
        return _clock() - t0

    def t_handle():
        return time_batch(eng.handle, batch, 1.0)

    n = len(batch)
    parts_f = (("parse", t_parse), ("lookup", t_lookup), ("apply", t_apply), ("loop", t_loop),
               ("handle", t_handle))
    samples: dict[str, list[float]] = {name: [] for name, _ in parts_f}
    for _ in range(rounds):             # interleaved, so a slow spell hits every part alike
        for name, f in parts_f:
            samples[name].append(f())
    best = {name: min(v) / n * 1e6 for name, v in samples.items()}
    whole = best["handle"]
    parts = {"parse (proto.packet.parse)": best["parse"],
             "dict lookup (index.get)": best["lookup"],
             "rewrite (proto.fullnat.apply)": best["apply"] - best["loop"]}
    parts["rest of handle/_forward (state, timer, counters, calls)"] = whole - sum(parts.values())
    us = {k: round(v, 3) for k, v in parts.items()}

    prof = cProfile.Profile()
    prof.enable()
    for p in batch:
        eng.handle(p, 1.0)
    prof.disable()
    st = pstats.Stats(prof)
    rows = []
    for (fn, line, name), (cc, nc, tt, ct, _callers) in st.stats.items():
        short = f"{fn.rsplit('/', 2)[-2]}/{fn.rsplit('/', 1)[-1]}:{line}({name})" if "/" in fn else name
        rows.append((tt, ct, nc, short))
    rows.sort(reverse=True)
    total_tt = sum(r[0] for r in rows)
    top = [{"function": r[3], "calls_per_packet": round(r[2] / n, 2),
            "tottime_share": round(r[0] / total_tt, 3), "cumtime_share": round(r[1] / total_tt, 3)}
           for r in rows[:10]]
    return {"us_per_packet": round(whole, 3), "split_us": us, "profile_top": top,
            "profile_packets": n}


def run(quick: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    out.update(engine_pps(quick))
    out.update(tcp_conn_cost(quick))
    out.update(tcp_conn_sync_cost(quick))
    out["split"] = split(quick)
    out.update(lookup_and_memory(quick))
    out["memory"] = memory_breakdown(5_000 if quick else 20_000)
    # a PROXY-v2 service's per-packet cost next to a plain TCP one (bench/proxy.py)
    from bench import proxy
    out["proxy_v2_vs_plain"] = proxy.run(quick)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


if __name__ == "__main__":
    import json
    print(json.dumps(run("--quick" in sys.argv), indent=1))
