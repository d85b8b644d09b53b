"""Packets/s through NFQUEUE on the lab's path: a bare listener that only accepts
(the ceiling) against the tandem node on established UDP flows, in one run.

Placement (both measurements): the C generator (bench/gen.c, sendmmsg) in the
client namespace on CPU 0 sends 18-byte UDP datagrams over 64 flows through the
router and the front bridge to director a, whose raw PREROUTING queues them
(NOTRACK + NFQUEUE, as director.rules installs); the listener on CPU 1 is either

  ceiling: `python -m bench.nfq listen`, python-netfilterqueue's own blocking
           run() loop with a callback that only calls accept().  The datagrams
           are addressed to rs1:8080 (the router routes the back segment via a),
           so an accepted packet is forwarded to the real server exactly as
           tandem forwards a rewritten one: same hops after the verdict;
  tandem:  `tandem node` (asyncio, the adapter's batched reads, the engine),
           the datagrams addressed to VIP:80, rewritten to rs:8080.

The real servers drop the datagrams (an nft rule in their namespaces), so no
reply doubles the director's load.  The rate counted is the kernel's: verdicts
given = id_sequence advance - netlink drops - queue growth, over a steady window
that starts after the flows are open.  The generator's own rate with nothing
queued (the rule drops in raw PREROUTING instead) is measured on the same path.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from bench import cgen, common

PREFIX = "tbnfq"
QUEUE = 0
CHAIN = "TBENCH"
FLOWS = 64
SIZE = 18


def _rules(ns: str, dst: str, target: list[str]) -> None:
    common.iptables(ns, "-t", "raw", "-N", CHAIN, check=False)
    common.iptables(ns, "-t", "raw", "-F", CHAIN)
    common.iptables(ns, "-t", "raw", "-A", CHAIN, "-d", dst, "-j", "NOTRACK")
    common.iptables(ns, "-t", "raw", "-A", CHAIN, "-d", dst, *target)
    common.iptables(ns, "-t", "raw", "-I", "PREROUTING", "1", "-j", CHAIN)


def _unrules(ns: str) -> None:
    while common.iptables(ns, "-t", "raw", "-D", "PREROUTING", "-j", CHAIN, check=False).returncode == 0:
        pass
    common.iptables(ns, "-t", "raw", "-F", CHAIN, check=False)
    common.iptables(ns, "-t", "raw", "-X", CHAIN, check=False)


def _mac(ns: str, ifname: str) -> str:
    import json
    import subprocess
    cp = subprocess.run(["ip", "netns", "exec", ns, "ip", "-j", "link", "show", "dev", ifname],
                        capture_output=True, text=True, check=True)
    return json.loads(cp.stdout)[0]["address"]


class Generator:
    """The C generator: raw frames from the router's front interface to director a
    (default), or UDP sockets from the client namespace (mode "udp")."""

    def __init__(self, prefix: str, mode: str = "raw") -> None:
        from lab import topology
        self.mode = mode
        self.router_ns = common.ns(prefix, "router")
        self.client_ns = common.ns(prefix, "client")
        if mode == "raw":
            self.opts = {"ifname": "front", "src": topology.CLIENT_ADDR,
                         "src_mac": _mac(self.router_ns, "front"),
                         "dst_mac": _mac(common.ns(prefix, "a"), "front")}

    def __call__(self, dst: str, port: int, seconds: float) -> dict[str, Any]:
        if self.mode == "raw":
            return cgen.run_gen(self.router_ns, "raw", dst=dst, port=port, seconds=seconds,
                                flows=FLOWS, size=SIZE, batch=32, **self.opts)
        return cgen.run_gen(self.client_ns, "udp", dst=dst, port=port, seconds=seconds,
                            flows=FLOWS, size=SIZE, batch=32)


def _window(a_ns: str, gen: Generator, dst: str, port: int, seconds: float, warm: float,
            status=None, pid: int | None = None) -> dict[str, Any]:
    """Run the generator for `seconds`; read the queue counters at warm and at
    seconds - 0.3; return verdicts/s over that window and the generator's report.

    With the listener's pid, also its CPU time over the window: verdicts per
    CPU-second is the rate it would reach with its core to itself, a figure
    that other work on a shared 2-core box does not lower."""
    t, box, t0 = common.generator_in_background(gen, dst, port, seconds)
    time.sleep(warm)
    c1 = common.nfq_counters(a_ns, QUEUE)
    cpu1 = common.cpu_times()
    p1 = common.proc_cpu_s(pid) if pid else None
    s1 = status() if status else None
    time.sleep(max(0.5, t0 + seconds - 0.3 - time.monotonic()))
    c2 = common.nfq_counters(a_ns, QUEUE)
    cpu2 = common.cpu_times()
    p2 = common.proc_cpu_s(pid) if pid else None
    s2 = status() if status else None
    t.join(seconds + 20)
    if not c1 or not c2:
        return {"pps": 0, "error": "no queue counters (listener not bound?)",
                "generator": box.get("gen"), "generator_error": box.get("error")}
    dt = c2["t"] - c1["t"]
    out = {
        "pps": round(common.verdicts_between(c1, c2) / dt),
        "window_s": round(dt, 3),
        "queue_dropped_per_s": round((c2["queue_dropped"] - c1["queue_dropped"]) / dt),
        "netlink_dropped_per_s": round((c2["user_dropped"] - c1["user_dropped"]) / dt),
        "generator": box.get("gen"), "generator_error": box.get("error"),
        "cpu_busy": common.cpu_busy(cpu1, cpu2),
    }
    if p1 is not None and p2 is not None and p2 > p1:
        out["listener_cpu_share"] = round((p2 - p1) / dt, 3)
        out["pps_per_cpu_s"] = round(common.verdicts_between(c1, c2) / (p2 - p1))
    if s1 and s2:
        e1, e2 = s1["engine"], s2["engine"]
        out["engine_forwarded_per_s"] = round((e2["forwarded_in"] - e1["forwarded_in"]) / dt)
        out["engine_drops"] = e2.get("drops", {})
        out["conns"] = s2.get("conns")
    return out


def _generator_only(a_ns: str, gen: Generator, dst: str, seconds: float) -> dict[str, Any]:
    """The generator's own rate on the same path, dropped in a's raw PREROUTING."""
    _rules(a_ns, dst, ["-j", "DROP"])
    try:
        return gen(dst, 8080, seconds)
    finally:
        _unrules(a_ns)


def run(quick: bool = False, mode: str = "raw") -> dict[str, Any]:
    from lab import topology
    t0 = time.monotonic()
    seconds = 3.0 if quick else 4.0
    warm = 1.0 if quick else 1.2
    rs1 = topology.REAL_SERVERS[0]["addr"]
    out: dict[str, Any] = {"flows": FLOWS, "payload_bytes": SIZE,
                           "placement": f"generator on CPU {cgen.LOAD_CPU} ("
                                        + ("raw frames from the router's front interface"
                                           if mode == "raw" else "UDP sockets in the client namespace")
                                        + f"), listener on CPU {cgen.DIRECTOR_CPU} (director a's namespace)"}
    if cgen.binary() is None:
        return {**out, "error": "no C compiler: generator unavailable", "seconds": 0}
    with common.lab(PREFIX, node=False, ha=False) as info:
        a_ns = common.ns(PREFIX, "a")
        for r in topology.REAL_SERVERS:
            cgen.nft(common.ns(PREFIX, r["name"]),
                     "table inet tbench {\n chain pre {\n  type filter hook prerouting priority -300;\n"
                     "  udp dport 8080 counter drop\n }\n}\n")
        # the router reaches the back segment through director a (the ceiling's path)
        import subprocess
        subprocess.run(["ip", "netns", "exec", common.ns(PREFIX, "router"), "ip", "route", "add",
                        topology.BACK_NET, "via", topology.DIRECTORS[0]["front_addr"]],
                       check=True, capture_output=True)

        gen = Generator(PREFIX, mode)
        out["generator_mode"] = mode
        out["generator_only"] = _generator_only(a_ns, gen, rs1, min(seconds, 3.0))

        # Ceiling, tandem and (full run) the in-between listeners take turns, best of
        # `rounds` each: the speed of a shared 2-core VM drifts by tens of percent
        # within minutes, and other work only ever lowers a window's rate.
        rounds = 1 if quick else 3
        variants = () if quick else ("payload", "budget", "engine")
        ceilings, tandems = [], []
        others: dict[str, list] = {v: [] for v in variants}
        for _ in range(rounds):
            ceilings.append(_variant(PREFIX, gen, "accept", seconds, warm))
            rec = common.start_node(PREFIX, "a", cpu=cgen.DIRECTOR_CPU)
            try:
                tandems.append(_window(a_ns, gen, topology.VIP, topology.SERVICE_PORT, seconds, warm,
                                       status=lambda: common.status(PREFIX, "a", timeout=2.0),
                                       pid=rec["pid"]))
            finally:
                common.stop_node(rec)
            for v in variants:
                others[v].append(_variant(PREFIX, gen, v, seconds, warm))
        ceiling = max(ceilings, key=lambda r: r["pps"])
        fwd = max(tandems, key=lambda r: r["pps"])
        out["ceiling"], out["tandem"] = ceiling, fwd
        out["ceiling_samples_pps"] = [r["pps"] for r in ceilings]
        out["forward_samples_pps"] = [r["pps"] for r in tandems]
        if variants:
            # where the difference goes: the bare listener doing a little more each time
            out["variants"] = {v: {**max(rs, key=lambda r: r["pps"]), "samples_pps": [r["pps"] for r in rs]}
                               for v, rs in others.items()}
    out["nfq_ceiling_pps"] = ceiling["pps"]
    out["forward_pps"] = fwd["pps"]
    out["forward_ratio"] = round(fwd["pps"] / ceiling["pps"], 3) if ceiling["pps"] else None
    # the same ratio from verdicts per CPU-second of each listener (insensitive to other load)
    cc = [r.get("pps_per_cpu_s") for r in ceilings if r.get("pps_per_cpu_s")]
    tc = [r.get("pps_per_cpu_s") for r in tandems if r.get("pps_per_cpu_s")]
    if cc and tc:
        out["ceiling_pps_per_cpu_s"], out["forward_pps_per_cpu_s"] = max(cc), max(tc)
        out["forward_ratio_per_cpu_s"] = round(max(tc) / max(cc), 3)
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


VARIANTS = {
    "accept": "blocking run(), callback: accept()",
    "payload": "blocking run(), callback: get_payload(), set_payload(same bytes), accept()",
    "budget": "the adapter's loop (select, run_socket over a 256-packet budget), callback: accept()",
    "engine": "blocking run(), callback: the tandem Engine (get_payload, handle, set_payload, accept)",
}


def listen(queue: int, seconds: int, variant: str = "accept", config: str | None = None) -> None:
    """A bare listener (bounded by SIGALRM, whose default action terminates)."""
    import select
    import signal
    import socket
    import os
    from netfilterqueue import NetfilterQueue
    from director.nfqueue import BATCH, QUEUE_MAXLEN, SOCK_RCVBUF, _Budget
    signal.alarm(seconds)
    nfq = NetfilterQueue()
    if variant in ("accept", "budget"):
        cb = lambda pkt: pkt.accept()       # noqa: E731
    elif variant == "payload":
        def cb(pkt):
            pkt.set_payload(pkt.get_payload())
            pkt.accept()
    elif variant == "engine":
        from director.config import load
        from director.engine import Engine
        engine = Engine(load(config), now=time.monotonic())
        handle = engine.handle
        clock = time.monotonic

        def cb(pkt):
            data = pkt.get_payload()
            out = handle(data, clock())
            if out is None:
                pkt.drop()
            else:
                if out is not data:
                    pkt.set_payload(out)
                pkt.accept()
    else:
        raise SystemExit(f"unknown variant {variant}")
    nfq.bind(queue, cb, max_len=QUEUE_MAXLEN, sock_len=SOCK_RCVBUF)
    try:
        if variant != "budget":
            nfq.run()
            return
        sock = socket.socket(fileno=os.dup(nfq.get_fd()))
        sock.setblocking(False)
        budget = _Budget(sock)
        fd = nfq.get_fd()
        while True:
            select.select([fd], [], [], 0.5)
            budget.left = BATCH
            nfq.run_socket(budget)
    finally:
        nfq.unbind()


def _variant(prefix: str, gen: "Generator", variant: str, seconds: float, warm: float) -> dict:
    """One bare-listener variant on the forwarding path (to rs1)."""
    from lab import state as st
    from lab import topology
    a_ns = common.ns(prefix, "a")
    rs1 = topology.REAL_SERVERS[0]["addr"]
    dst, port = (topology.VIP, topology.SERVICE_PORT) if variant == "engine" else (rs1, 8080)
    argv = [sys.executable, "-m", "bench.nfq", "listen", "--queue", str(QUEUE),
            "--seconds", str(int(seconds + 30)), "--variant", variant]
    if variant == "engine":
        argv += ["--config", st.load_state(prefix)["configs"]["a"]]
        _rules(a_ns, dst, ["-j", "NFQUEUE", "--queue-num", str(QUEUE)])
        for la in topology.LADDRS:
            common.iptables(a_ns, "-t", "raw", "-A", CHAIN, "-d", la, "-j", "NOTRACK")
            common.iptables(a_ns, "-t", "raw", "-A", CHAIN, "-d", la, "-j", "NFQUEUE",
                            "--queue-num", str(QUEUE))
    else:
        _rules(a_ns, dst, ["-j", "NFQUEUE", "--queue-num", str(QUEUE)])
    lst = cgen.start(a_ns, argv, cpu=cgen.DIRECTOR_CPU)
    try:
        cgen.wait_until(lambda: bool(common.nfq_counters(a_ns, QUEUE)), 10)
        r = _window(a_ns, gen, dst, port, seconds, warm, pid=lst.pid)
    finally:
        cgen.stop(lst)
        _unrules(a_ns)
    r["listener"] = VARIANTS[variant]
    return r


if __name__ == "__main__":
    import argparse
    import json
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("listen", "run"))
    ap.add_argument("--queue", type=int, default=0)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--variant", default="accept", choices=tuple(VARIANTS))
    ap.add_argument("--config")
    ap.add_argument("--mode", default="raw", choices=("raw", "udp"))
    a = ap.parse_args()
    if a.what == "listen":
        listen(a.queue, a.seconds, a.variant, a.config)
    else:
        print(json.dumps(run(a.quick, a.mode), indent=1))
