"""`tandem demo`: the lab, real traffic through the VIP, what each server saw.

It drives the kernel-mode service (KERNEL_VIP) by default, as a deployment would run:
the engine schedules each new flow and the kernel's conntrack NAT forwards the rest;
`--forwarding engine` drives the engine-mode VIP instead (every packet through the engine)."""
from __future__ import annotations

import json
import sys

from lab import topology
from lab.nsutil import http_get
from lab.testing import run_in

PREFIX = "tandem"


def _table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" if i != 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*map(str, r)).rstrip() for r in [header, *rows])


def _node_status(info: dict) -> dict:
    a = info["directors"][0]
    host, port = a["api"].removeprefix("http://").split(":")
    code, body = http_get(a["ns"], host, int(port), "/status", timeout=3.0)
    return json.loads(body) if code == 200 else {}


def _director_line(st: dict, forwarding: str) -> str:
    """What director a did, from its /status: the engine's table, or the kernel's flows."""
    drops = sum(st.get("engine", {}).get("drops", {}).values())
    engine = st.get("engine", {})
    if forwarding == "kernel":
        k = st.get("kernel") or {}
        return (f"director a: {engine.get('kernel_handoffs', '?')} new flows scheduled by the "
                f"engine and handed to the kernel, {k.get('flows', '?')} flows followed in its "
                f"conntrack, {drops} packets dropped")
    return (f"director a: {engine.get('conns_new', '?')} connections made, "
            f"{st.get('conns', {}).get('total', '?')} in the table, {drops} packets dropped")


def traffic_table(info: dict, tcp_count: int = 300, udp_count: int = 300,
                  forwarding: str = "engine") -> int:
    from lab.plan import KERNEL_VIP
    vip = KERNEL_VIP if forwarding == "kernel" else info["vip"]
    ns = info["client"]["ns"]
    print(f"traffic: {tcp_count} TCP connections, {udp_count} UDP exchanges through {vip}:80 "
          f"from {info['client']['addr']}")
    tcp = run_in(ns, "tcp-whoami", "--host", vip, "--port", 80, "--count", tcp_count,
                 "--concurrency", 10, timeout=120)
    udp = run_in(ns, "udp-whoami", "--host", vip, "--port", 80, "--count", udp_count, timeout=120)
    rows = []
    for proto, res in (("tcp", tcp), ("udp", udp)):
        for rs in sorted(res["by_server"]):
            rows.append((proto, rs, res["by_server"][rs], ", ".join(sorted(res["peers"].get(rs, [])))))
    print()
    print(_table(rows, ("proto", "real server", "served", "peer addresses seen")))
    print()
    failed = tcp.get("failed", 0) + udp.get("lost", 0)
    st = _node_status(info)
    print(f"tcp: {tcp['ok']} ok, {tcp.get('failed', 0)} failed; udp: {udp['ok']} ok, {udp.get('lost', 0)} lost")
    print(_director_line(st, forwarding))
    client_seen = any(info["client"]["addr"] in p for r in (tcp, udp) for p in r["peers"].values())
    if client_seen:
        print("FAIL: a real server saw the client's own address (FULLNAT broken)")
    return 1 if failed or client_seen else 0


def main(prefix: str = PREFIX, forwarding: str = "kernel") -> int:
    from lab import drill
    from lab.drill_pairs import LabPair
    from lab.plan import KERNEL_VIP
    # a line as soon as it is known, also into a pipe or a file (`make demo | tee demo.log`)
    sys.stdout.reconfigure(line_buffering=True)     # type: ignore[union-attr]
    try:
        info = topology.up(prefix, node=True, scheduler="rr", kernel=forwarding == "kernel")
    except Exception as exc:      # a failed up has already cleaned up after itself
        print(f"lab up failed: {exc}", file=sys.stderr)
        return 1
    try:
        names = " ".join(r["name"] for r in info["real_servers"])
        vip = KERNEL_VIP if forwarding == "kernel" else info["vip"]
        how = ("the engine schedules each new flow, the kernel forwards the rest"
               if forwarding == "kernel" else "every packet through the engine")
        print(f"lab up: VIP {vip} (forwarding = \"{forwarding}\": {how}), directors a (master, "
              f"priority 150) and b (backup, 100), real servers {names}")
        rc = traffic_table(info, forwarding=forwarding)
        pair = LabPair(prefix, forwarding=forwarding)
        for title, kw in (("kill drill: director a is killed (links down, SIGKILL)",
                           dict(fault="kill")),
                          ("failback drill: director a is restored and preempts",
                           dict(fault="restore", target="a"))):
            print(f"\n{title}; 200 connections, one message each 20 ms")
            r = drill.run(prefix, conns=200, duration=4.0, lead=1.0, pair=pair, **kw)
            print(drill.table(r))
            if (r["survived"], r["reset"], r["stalled"]) != (r["conns"], 0, 0):
                rc = 1
        return rc
    finally:
        topology.down(prefix)
        print("\nlab down")
