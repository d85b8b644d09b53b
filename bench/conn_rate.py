"""New TCP connections/s: straight to the real servers, through kernel nftables
FULLNAT on director a, and through tandem on director a, in one lab.

One connection = connect, "WHOAMI\\n", one reply line, close (the client closes
first; ~10 packets through the director).  Load: the C generator (bench/gen.c
tcp, epoll, CONNS connections in flight) and a tiny C line server on each real
server's port 8089 (bench/gen.c serve; the lab's Python echo servers would be
the bottleneck), all pinned to CPU 0.  tandem's node is pinned to CPU 1.  Kernel
NAT has no process: its work runs in softirq on the CPU that sends (mostly the
load's CPU 0), so kernel_nat_cps is bounded by the load's core, as direct_cps is.

  direct:     generator in director a's namespace -> rs1..3:8089 (no NAT, no director)
  kernel NAT: client -> VIP:80, nftables in a: dnat (numgen round-robin) + snat to
              the two laddrs, conntrack on; no tandem
  tandem:     client -> VIP:80, `tandem node` in a (service to rs1..3:8089)

Each is measured `rounds` times, alternating, best kept (other work on the box
only ever lowers a rate).
"""
from __future__ import annotations

import os
import time
from typing import Any

from bench import cgen, common

PREFIX = "tbcps"
#: the C line servers' port: one the lab's own echo servers leave free (they hold
#: lab.plan.RS_PORT and PROXY_RS_PORT; a C server that cannot bind never answers)
PORT = 8089
CONNS = 32
RPS = False

NAT_TABLE = "tbnat"


def _nat_script(vip: str, reals: list[str], laddrs: list[str]) -> str:
    m = ", ".join(f"{i} : {a}" for i, a in enumerate(reals))
    return f"""table ip {NAT_TABLE} {{
  chain pre {{
    type nat hook prerouting priority dstnat;
    ip daddr {vip} tcp dport 80 dnat to numgen inc mod {len(reals)} map {{ {m} }} : {PORT}
  }}
  chain post {{
    type nat hook postrouting priority srcnat;
    ip daddr {reals[0].rsplit('.', 1)[0]}.0/24 tcp dport {PORT} snat to {laddrs[0]}-{laddrs[-1]}
  }}
}}
"""


def _services() -> list[dict]:
    """The lab's plain services (VIP:80 tcp and udp), to the C servers' port: the
    PROXY services are left out, so the node runs the same configuration as before
    they existed (before/after comparisons in docs/benchmarks.md)."""
    from lab import topology
    svcs = [s for s in topology.node_config("a")["services"] if "client_address" not in s]
    for s in svcs:
        for r in s["real_servers"]:
            r["port"] = PORT
    return svcs


def node_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` and its threads so far."""
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def run(quick: bool = False) -> dict[str, Any]:
    from lab import nsutil, topology
    t0 = time.monotonic()
    seconds = 3.0 if quick else 4.0
    rounds = 1 if quick else 2
    reals = [r["addr"] for r in topology.REAL_SERVERS]
    out: dict[str, Any] = {
        "connection": "connect, WHOAMI line, reply line, close (client first)",
        "generator": f"bench/gen.c tcp, {CONNS} in flight, CPU {cgen.LOAD_CPU}",
        "servers": f"bench/gen.c serve on rs1..3:{PORT}, CPU {cgen.LOAD_CPU}",
        "director_cpu": cgen.DIRECTOR_CPU,
    }
    if cgen.binary() is None:
        return {**out, "error": "no C compiler: generator unavailable", "seconds": 0}
    servers = []
    with common.lab(PREFIX, node=False, ha=False, config_extra={"services": _services()}):
        a_ns, client_ns = common.ns(PREFIX, "a"), common.ns(PREFIX, "client")
        # the generator's namespaces reuse ports in TIME_WAIT, as the client's already does
        for ns in (a_ns, client_ns):
            nsutil.set_sysctls(ns, {"net.ipv4.tcp_tw_reuse": 1,
                                    "net.ipv4.ip_local_port_range": "10000 65000"})
        if RPS:
            # director a's packet work (forwarding, NAT, queueing) on the director's core
            import subprocess
            mask = format(1 << cgen.DIRECTOR_CPU, "x")
            for ifn in ("front", "back"):
                subprocess.run(["ip", "netns", "exec", a_ns, "sh", "-c",
                                f"echo {mask} > /sys/class/net/{ifn}/queues/rx-0/rps_cpus"],
                               check=True, capture_output=True)
        try:
            for r in topology.REAL_SERVERS:
                servers.append(cgen.start(common.ns(PREFIX, r["name"]),
                                          [str(cgen.binary()), "serve", "--port", str(PORT),
                                           "--name", r["name"], "--seconds", "600"],
                                          cpu=cgen.LOAD_CPU))
            ok = cgen.wait_until(lambda: all(
                nsutil.tcp_whoami(common.ns(PREFIX, r["name"]), "127.0.0.1", PORT, 0.5)
                .startswith(r["name"]) for r in topology.REAL_SERVERS), 10)
            if not ok:
                raise RuntimeError("the C line servers did not answer")

            def gen(ns: str, dst: str, port: int) -> dict[str, Any]:
                c0 = common.cpu_times()
                r = cgen.run_gen(ns, "tcp", dst=dst, port=port, seconds=seconds, conns=CONNS,
                                 timeout=2)
                r["cpu_busy"] = common.cpu_busy(c0, common.cpu_times())
                return r

            direct, knat, tandem = [], [], []
            for _ in range(rounds):
                direct.append(gen(a_ns, ",".join(reals), PORT))
                cgen.nft(a_ns, _nat_script(topology.VIP, reals, topology.LADDRS))
                try:
                    knat.append(gen(client_ns, topology.VIP, 80))
                finally:
                    cgen.nft_delete(a_ns, "ip", NAT_TABLE)
                rec = common.start_node(PREFIX, "a", cpu=cgen.DIRECTOR_CPU)
                try:
                    n0 = node_cpu_s(rec["pid"])
                    r = gen(client_ns, topology.VIP, 80)
                    # the node's own CPU per connection (user + system, its verdicts'
                    # forwarding included): what other tenants of its core cannot change
                    r["node_cpu_us_per_conn"] = round(
                        (node_cpu_s(rec["pid"]) - n0) / max(r["ok"], 1) * 1e6, 1)
                    st = common.status(PREFIX, "a", timeout=2.0)
                    r["engine_drops"] = st["engine"].get("drops", {})
                    r["queue"] = st.get("queue")
                    tandem.append(r)
                finally:
                    common.stop_node(rec)
        finally:
            for p in servers:
                cgen.stop(p)
    best = lambda xs: max(xs, key=lambda r: r["cps"])     # noqa: E731
    d, k, t = best(direct), best(knat), best(tandem)
    out.update({
        "direct_cps": round(d["cps"]), "kernel_nat_cps": round(k["cps"]),
        "conn_rate_cps": round(t["cps"]),
        "conn_rate_ratio": round(t["cps"] / k["cps"], 3) if k["cps"] else None,
        # the lowest of the rounds: the node's CPU per connection does not depend on the
        # share of its core it got, and contention only ever adds to it
        "conn_rate_node_cpu_us": min(r["node_cpu_us_per_conn"] for r in tandem),
        "direct": d, "kernel_nat": k, "tandem": t,
        "samples_cps": {"direct": [round(r["cps"]) for r in direct],
                        "kernel_nat": [round(r["cps"]) for r in knat],
                        "tandem": [round(r["cps"]) for r in tandem],
                        "tandem_node_cpu_us_per_conn": [r["node_cpu_us_per_conn"] for r in tandem]},
        "seconds": round(time.monotonic() - t0, 1),
    })
    return out


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run("--quick" in sys.argv), indent=1))
