"""Four forwarding paths side by side in one lab: iperf3 throughput (1 and 4 TCP streams),
established UDP packets/s and new TCP connections/s, for

  direct:  client -> rs1 routed through director a, no NAT (and no conntrack: a raw
           `notrack` rule, so this is the kernel's plain forwarding floor)
  nft_nat: client -> NAT_VIP on a, a plain nftables table doing dnat to rs1 and snat to
           NAT_LADDR (no tandem involved)
  kernel:  client -> KERNEL_VIP, tandem `forwarding = "kernel"` (the engine schedules the
           first packet, conntrack NAT forwards the rest)
  engine:  client -> VIP, tandem `forwarding = "engine"` (every packet through NFQUEUE)

All four are set up at once in one lab (tandem's node runs throughout, on CPU 1) and are
measured in interleaved rounds, the order rotated each round, best of the rounds kept:
other work on a shared 2-core box only ever lowers a rate, and drift hits all four alike.
Every path ends at the same real server, rs1 (one real server per service, so iperf3's
control and data connections meet), over the same hops: client, router, director a, rs1.
The load (iperf3 client and server, the C generator, the C line server) runs on CPU 0.

  iperf3:  `iperf3 -c DST -t T -O 1 -P 1|4` from the client, `iperf3 -s` in rs1
  UDP:     bench/gen.c raw frames from the router's front interface (16 flows, 18-byte
           payloads, the nfq benchmark's generator), counted where they arrive: an nftables
           counter in rs1 that drops them; the window starts after the flows are open
  conn/s:  bench/gen.c tcp (connect, WHOAMI, one line, close; 32 in flight) against
           bench/gen.c serve in rs1

Also the node's own CPU per connection in kernel mode (user + system over the kernel
path's conn/s windows) and its RSS and kernel-flow count afterwards.
"""
from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from bench import cgen, common

PREFIX = "tbkp"
#: the plain nftables path's own VIP and laddr (tandem's services keep theirs)
NAT_VIP = "198.18.0.102"
NAT_LADDR = "198.18.2.103"
NAT_TABLE = "tbkpath"
IPERF_PORT = 5201
CPS_PORT = 8089
UDP_PORT = 9000
UDP_FLOWS = 16
UDP_SIZE = 18
CONNS = 32
PATHS = ("direct", "nft_nat", "kernel", "engine")
METRICS = ("tput_1", "tput_4", "udp_pps", "cps")
#: (c)/(b) and what it is held to (issue 13); None: reported only
RATIO_TARGETS = {"tput_1": 0.9, "tput_4": 0.9, "udp_pps": 0.9, "cps": 0.7}


def dst_of(path: str) -> str:
    from lab import plan
    return {"direct": plan.REAL_SERVERS[0]["addr"], "nft_nat": NAT_VIP,
            "kernel": plan.KERNEL_VIP, "engine": plan.VIP}[path]


def services() -> list[dict[str, Any]]:
    """tandem's services: VIP (engine) and KERNEL_VIP (kernel), each tcp IPERF_PORT,
    tcp CPS_PORT and udp UDP_PORT, to rs1 on the same port."""
    from lab import plan
    rs1 = plan.REAL_SERVERS[0]["addr"]
    out = []
    for vip, laddrs, mode in ((plan.VIP, plan.LADDRS, "engine"),
                              (plan.KERNEL_VIP, plan.KERNEL_LADDRS, "kernel")):
        for proto, port in (("tcp", IPERF_PORT), ("tcp", CPS_PORT), ("udp", UDP_PORT)):
            out.append({"proto": proto, "vip": vip, "port": port, "scheduler": "wlc",
                        "laddrs": list(laddrs), "forwarding": mode,
                        "real_servers": [{"addr": rs1, "port": port, "weight": 1}]})
    return out


def nat_script(client: str, rs1: str) -> str:
    """Director a's own table: notrack for the direct path, dnat + snat for NAT_VIP.

    The NAT_VIP flows send no conntrack events (`ct event set 0`): tandem's node listens
    to every event of the namespace, and would otherwise decode and ignore this path's
    (and, when they overran its socket, dump the table), which is not the comparison."""
    return f"""table ip {NAT_TABLE} {{
  chain raw {{
    type filter hook prerouting priority raw;
    ip saddr {client} ip daddr {rs1} notrack
    ip saddr {rs1} ip daddr {client} notrack
  }}
  chain quiet {{
    type filter hook prerouting priority -120;
    ip daddr {NAT_VIP} ct state new ct event set 0
  }}
  chain pre {{
    type nat hook prerouting priority dstnat;
    ip daddr {NAT_VIP} dnat to {rs1}
  }}
  chain post {{
    type nat hook postrouting priority srcnat;
    ct original ip daddr {NAT_VIP} snat to {NAT_LADDR}
  }}
}}
"""


RS_SCRIPT = f"""table inet {NAT_TABLE} {{
  counter udpin {{ }}
  chain pre {{
    type filter hook prerouting priority -300;
    udp dport {UDP_PORT} counter name "udpin" drop
  }}
}}
"""


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "ip", *args], check=True, capture_output=True)


def _udp_count(ns: str) -> tuple[int, float]:
    cp = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "counter", "inet",
                         NAT_TABLE, "udpin"], capture_output=True, text=True, check=True)
    t = time.monotonic()
    for item in json.loads(cp.stdout)["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"]), t
    raise RuntimeError("no udpin counter in rs1")


def iperf(ns: str, dst: str, streams: int, seconds: float) -> dict[str, Any]:
    """One bounded iperf3 run; Gbit/s received."""
    cgen._check_lab(dst)
    argv = ["iperf3", "-c", dst, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-O", "1",
            "-P", str(streams), "-J"]
    cp = subprocess.run(cgen.ns_argv(ns, argv, cgen.LOAD_CPU), capture_output=True, text=True,
                        timeout=seconds + 20)
    try:
        res = json.loads(cp.stdout)
    except ValueError:
        return {"gbps": 0.0, "error": f"iperf3 rc {cp.returncode}: {cp.stderr[-300:]}"}
    if res.get("error"):
        return {"gbps": 0.0, "error": res["error"]}
    end = res["end"]
    return {"gbps": round(end["sum_received"]["bits_per_second"] / 1e9, 3),
            "retransmits": end.get("sum_sent", {}).get("retransmits"),
            "cpu_host": round(end.get("cpu_utilization_percent", {}).get("host_total", 0), 1)}


def udp_window(gen, rs_ns: str, dst: str, seconds: float, warm: float) -> dict[str, Any]:
    """Generator for `seconds`; packets/s counted at rs1 between warm and seconds - 0.3."""
    th, box, t0 = common.generator_in_background(gen, dst, UDP_PORT, seconds)
    time.sleep(warm)
    n1, t1 = _udp_count(rs_ns)
    c1 = common.cpu_times()
    time.sleep(max(0.5, t0 + seconds - 0.3 - time.monotonic()))
    n2, t2 = _udp_count(rs_ns)
    c2 = common.cpu_times()
    th.join(seconds + 20)
    return {"pps": round((n2 - n1) / (t2 - t1)), "offered_pps": (box.get("gen") or {}).get("pps"),
            "cpu_busy": common.cpu_busy(c1, c2), "generator_error": box.get("error")}


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Best of each (metric, path), and the ratios of each path to nft_nat; the kernel
    path's ratios checked against RATIO_TARGETS."""
    best = {m: {p: (max(v) if v else None) for p, v in by.items()} for m, by in samples.items()}
    ratios: dict[str, dict[str, float | None]] = {}
    for m, by in best.items():
        base = by.get("nft_nat")
        ratios[m] = {p: (round(v / base, 3) if v is not None and base else None)
                     for p, v in by.items() if p != "nft_nat"}
    checks = {m: {"ratio": ratios.get(m, {}).get("kernel"), "target": f">= {t:g}",
                  "pass": (None if ratios.get(m, {}).get("kernel") is None
                           else ratios[m]["kernel"] >= t)}
              for m, t in RATIO_TARGETS.items()}
    return {"best": best, "ratios": ratios, "checks": checks}


def _rotated(seq: tuple[str, ...], k: int) -> list[str]:
    k %= len(seq)
    return list(seq[k:] + seq[:k])


def run(quick: bool = False, metrics: tuple[str, ...] = METRICS,
        paths: tuple[str, ...] = PATHS) -> dict[str, Any]:
    """The side-by-side run; `metrics` and `paths` narrow it (a development run of one
    measure: `python -m bench.kpath --quick --metrics cps --paths nft_nat,kernel`)."""
    from lab import topology
    from bench.nfq import Generator
    t0 = time.monotonic()
    rounds = 1 if quick else 2
    tput_s = 2.0 if quick else 3.0
    win_s = 2.5 if quick else 3.0
    rs = topology.REAL_SERVERS[0]
    rs1 = rs["addr"]
    out: dict[str, Any] = {
        "paths": {p: dst_of(p) for p in PATHS}, "real_server": f"{rs['name']} {rs1}",
        "rounds": rounds, "iperf_seconds": tput_s, "window_seconds": win_s,
        "udp": f"bench/gen.c raw, {UDP_FLOWS} flows, {UDP_SIZE}-byte payloads, counted at rs1",
        "cps": f"bench/gen.c tcp, {CONNS} in flight, against bench/gen.c serve in rs1",
        "placement": f"load (iperf3 both ends, generators, line server) on CPU {cgen.LOAD_CPU}, "
                     f"tandem's node on CPU {cgen.DIRECTOR_CPU}",
        "loadavg_at_start": [round(x, 2) for x in __import__("os").getloadavg()],
    }
    if cgen.binary() is None:
        return {**out, "error": "no C compiler: generator unavailable", "seconds": 0}
    samples: dict[str, dict[str, list[float]]] = {m: {p: [] for p in PATHS} for m in METRICS}
    runs: dict[str, dict[str, list[dict]]] = {m: {p: [] for p in PATHS} for m in METRICS}
    node_cpu: list[float] = []
    procs: list[subprocess.Popen] = []
    with common.lab(PREFIX, node=False, ha=False, config_extra={"services": services()}):
        a_ns, rs_ns = common.ns(PREFIX, "a"), common.ns(PREFIX, rs["name"])
        client_ns, router_ns = common.ns(PREFIX, "client"), common.ns(PREFIX, "router")
        a = topology.DIRECTORS[0]
        _ip(a_ns, "addr", "add", f"{NAT_VIP}/32", "dev", "front")
        _ip(a_ns, "addr", "add", f"{NAT_LADDR}/32", "dev", "back")
        _ip(router_ns, "route", "add", topology.BACK_NET, "via", a["front_addr"])
        _ip(rs_ns, "route", "add", topology.CLIENT_NET, "via", a["back_addr"])
        cgen.nft(a_ns, nat_script(topology.CLIENT_ADDR, rs1))
        cgen.nft(rs_ns, RS_SCRIPT)
        budget = str(int(300 * rounds + 120))
        try:
            procs.append(cgen.start(rs_ns, ["timeout", budget, "iperf3", "-s", "-p", str(IPERF_PORT)],
                                    cpu=cgen.LOAD_CPU))
            procs.append(cgen.start(rs_ns, [str(cgen.binary()), "serve", "--port", str(CPS_PORT),
                                            "--name", rs["name"], "--seconds", budget],
                                    cpu=cgen.LOAD_CPU))
            if not cgen.wait_until(lambda: common_whoami(rs_ns, CPS_PORT, rs["name"]), 10):
                raise RuntimeError("the C line server in rs1 did not answer")
            rec = common.start_node(PREFIX, "a", cpu=cgen.DIRECTOR_CPU)
            gen = Generator(PREFIX, "raw")
            for r in range(rounds):
                order = [p for p in _rotated(PATHS, r) if p in paths]
                for streams, m in ((1, "tput_1"), (4, "tput_4")):
                    if m not in metrics:
                        continue
                    for p in order:
                        x = iperf(client_ns, dst_of(p), streams, tput_s)
                        runs[m][p].append(x)
                        samples[m][p].append(x["gbps"])
                for p in (order if "udp_pps" in metrics else []):
                    x = udp_window(gen, rs_ns, dst_of(p), win_s, 1.0)
                    runs["udp_pps"][p].append(x)
                    samples["udp_pps"][p].append(x["pps"])
                for p in (order if "cps" in metrics else []):
                    n0 = common.proc_cpu_s(rec["pid"])
                    k0 = _kernel_stats(PREFIX)
                    c0 = common.cpu_times()
                    x = cgen.run_gen(client_ns, "tcp", dst=dst_of(p), port=CPS_PORT,
                                     seconds=win_s, conns=CONNS, timeout=2)
                    x["cpu_busy"] = common.cpu_busy(c0, common.cpu_times())
                    n1 = common.proc_cpu_s(rec["pid"])
                    k1 = _kernel_stats(PREFIX)
                    x["node_kernel_stats"] = {k: k1.get(k, 0) - k0.get(k, 0) for k in
                                              ("events", "new", "overruns", "resyncs")}
                    if n0 is not None and n1 is not None and x["ok"]:
                        x["node_cpu_us_per_conn"] = round((n1 - n0) / x["ok"] * 1e6, 1)
                        if p == "kernel":
                            node_cpu.append(x["node_cpu_us_per_conn"])
                    runs["cps"][p].append(x)
                    samples["cps"][p].append(round(x["cps"]))
            st = common.status(PREFIX, "a", timeout=2.0)
            out["node_after"] = {"kernel": st.get("kernel"),
                                 "rss_kb": _rss_kb(rec["pid"]),
                                 "queue": st.get("queue")}
            common.stop_node(rec)
        finally:
            for pr in procs:
                cgen.stop(pr)
    out.update(summarize(samples))
    out["samples"] = samples
    out["runs"] = runs
    out["kernel_node_cpu_us_per_conn"] = min(node_cpu) if node_cpu else None
    out["kernel_node_cpu_us_per_conn_samples"] = node_cpu
    r = out["ratios"]
    out["kernel_tput_ratio_1"] = r["tput_1"].get("kernel")
    out["kernel_tput_ratio_4"] = r["tput_4"].get("kernel")
    out["kernel_pps_ratio"] = r["udp_pps"].get("kernel")
    out["kernel_cps_ratio"] = r["cps"].get("kernel")
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def _kernel_stats(prefix: str) -> dict[str, int]:
    try:
        return common.status(prefix, "a", timeout=2.0).get("kernel") or {}
    except Exception:  # noqa: BLE001 - informational
        return {}


def common_whoami(ns: str, port: int, name: str) -> bool:
    from lab import nsutil
    return nsutil.tcp_whoami(ns, "127.0.0.1", port, 0.5).startswith(name)


def _rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


if __name__ == "__main__":
    import sys
    def _arg(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sys.argv[sys.argv.index(name) + 1].split(",")) if name in sys.argv else default
    print(json.dumps(run("--quick" in sys.argv, _arg("--metrics", METRICS), _arg("--paths", PATHS)),
                     indent=1))
