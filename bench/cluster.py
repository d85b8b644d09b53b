"""Cluster mode's aggregate forwarding rate: 3 directors against 1, side by side in one run.

One cluster lab (`tandem lab up --cluster 3`, lab/cluster.py) with a UDP service beside its
VIP:80 (VIP:UDP_PORT, `maglev`, no health check, every director in engine forwarding: each
packet through its node's NFQUEUE, the per-packet path that is CPU-bound per process).  The
same load is offered in both shapes, in interleaved rounds (3, then 1, each round), best of
the rounds kept:

  3: every director announces the VIP; the router's ECMP route (hash on ports:
     fib_multipath_hash_policy 1) spreads the flows over a, b and c;
  1: b and c drain (`POST /cluster/drain`: VIP withdrawn, the nodes stay up and in sync),
     the router's route has a alone; the drain is cancelled after the window.

The load: bench/gen.c udp in the client namespace (FLOWS connected sockets, a new source
port each per window, 18-byte payloads, sendmmsg as fast as the kernel takes them), pinned
to CPU 0, through the router to the VIP.  The real servers drop the datagrams in an nft
rule that counts them: the aggregate rate is what reached them, over a window that starts
after the flows are open.  Per director: the verdicts its queue gave (the kernel's NFQUEUE
counters) and its node's CPU time over the window.

New connections/s in the same rounds and shapes: bench/gen.c tcp from the client (connect,
one line, close; CONNS in flight, each a new source port the router hashes) to
VIP:CPS_PORT, a TCP service to bench/gen.c serve in every real server.  A connection costs
a director more in a cluster than a packet does: its entry is synced to every peer at the
SYN and again when established, and every peer applies it.

On a machine with fewer cores than directors plus load, the directors share the cores,
and the measured 3/1 ratio says how much more the cluster forwards *on this machine*.
The projection says what the run measured about scaling itself: each director's packets
per CPU-second of its own node (what it forwards with a core to itself) and its share of
the flows; with a core per director the cluster saturates when its busiest director does,
so projected 3-director rate = min over directors of (packets per CPU-second / share), and
the projected ratio divides that by the single director's packets per CPU-second.

    python -m bench.cluster [--quick]        tandem bench --only cluster
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any, Iterator

from bench import cgen, common

PREFIX = "tbcl"
UDP_PORT = 9000
FLOWS = 256
SIZE = 18
#: the new-connection measure: a TCP service to bench/gen.c serve in every real server
CPS_PORT = 8089
CONNS = 32
SHAPES = ("3", "1")
#: the directors that drain for the 1-director shape (a stays)
WITHDRAWN = ("b", "c")
RS_TABLE = "tbcluster"
RS_SCRIPT = f"""table inet {RS_TABLE} {{
  counter udpin {{ }}
  chain pre {{
    type filter hook prerouting priority -300;
    udp dport {UDP_PORT} counter name "udpin" drop
  }}
}}
"""


def udp_service() -> dict[str, Any]:
    """The benchmark's service on every director (lab/cluster.py adds each one's laddrs)."""
    return _service("udp", UDP_PORT)


def tcp_service() -> dict[str, Any]:
    """The new-connection measure's service (to bench/gen.c serve on CPS_PORT)."""
    return _service("tcp", CPS_PORT)


def _service(proto: str, port: int) -> dict[str, Any]:
    from lab import bgp, cluster_plan as cp
    return {"proto": proto, "vip": bgp.VIP, "port": port, "scheduler": "maglev",
            "real_servers": [{"addr": r["addr"], "port": port} for r in cp.REAL_SERVERS]}


# -- the figures (pure: unit-tested through the shape run() builds) ----------------------------

def window_figures(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One window's figures from two readings, each {"t": s, "rs": {name: packets},
    "verdicts": {director: verdicts so far}, "cpu_s": {director: node CPU s}}:
    aggregate packets/s at the real servers, each director's packets/s, share of the
    packets, CPU share of its node and packets per CPU-second."""
    dt = after["t"] - before["t"]
    if dt <= 0:
        raise ValueError("a window needs a later second reading")
    pps = sum(after["rs"][n] - before["rs"][n] for n in after["rs"]) / dt
    dirs: dict[str, dict[str, Any]] = {}
    forwarded = {d: after["verdicts"][d] - before["verdicts"].get(d, 0) for d in after["verdicts"]}
    total = sum(forwarded.values())
    for d, n in sorted(forwarded.items()):
        cpu = None
        if after["cpu_s"].get(d) is not None and before["cpu_s"].get(d) is not None:
            cpu = after["cpu_s"][d] - before["cpu_s"][d]
        dirs[d] = {"pps": round(n / dt), "share": round(n / total, 3) if total else None,
                   "cpu_share": round(cpu / dt, 3) if cpu is not None else None,
                   "pps_per_cpu_s": round(n / cpu) if cpu else None}
    return {"pps": round(pps), "window_s": round(dt, 3), "directors": dirs}


def projected_pps(directors: dict[str, dict[str, Any]]) -> float | None:
    """With a core to each director: the aggregate at which the busiest one saturates
    (min over directors that forwarded anything of packets per CPU-second / share)."""
    caps = [d["pps_per_cpu_s"] / d["share"] for d in directors.values()
            if d.get("share") and d.get("pps_per_cpu_s")]
    return round(min(caps)) if caps else None


def summarize(windows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Best window of each shape (by aggregate packets/s), the 3/1 ratio measured, and the
    ratio projected from packets per CPU-second and shares (see the module docstring)."""
    best: dict[str, dict[str, Any] | None] = {
        s: (max(ws, key=lambda w: w["pps"]) if ws else None) for s, ws in windows.items()}
    b3, b1 = best.get("3"), best.get("1")
    proj3 = projected_pps(b3["directors"]) if b3 else None
    proj1 = projected_pps(b1["directors"]) if b1 else None
    return {
        "best": best,
        "samples_pps": {s: [w["pps"] for w in ws] for s, ws in windows.items()},
        "cluster_pps_3": b3["pps"] if b3 else None,
        "cluster_pps_1": b1["pps"] if b1 else None,
        "cluster_pps_ratio": round(b3["pps"] / b1["pps"], 3) if b3 and b1 and b1["pps"] else None,
        "cluster_projected_pps_3": proj3,
        "cluster_projected_pps_1": proj1,
        "cluster_projected_ratio": round(proj3 / proj1, 3) if proj3 and proj1 else None,
        "cluster_split_3": ({d: x["share"] for d, x in b3["directors"].items()} if b3 else None),
    }


def cpu_us_per_conn(w: dict[str, Any]) -> dict[str, float | None]:
    """Each director's node CPU per connection of the whole cluster (µs): its own
    connections' packets and the peers' entries it applies (sync among N)."""
    return {d: (round(x["cpu_share"] / w["cps"] * 1e6, 1)
                if x.get("cpu_share") is not None and w["cps"] else None)
            for d, x in (w.get("directors") or {}).items()}


def projected_cps(w: dict[str, Any]) -> float | None:
    """With a core to each director: the connections/s at which the first one saturates
    (the lowest of connections/s / its node's CPU share), CPU taken as growing with the rate."""
    caps = [w["cps"] / x["cpu_share"] for x in (w.get("directors") or {}).values()
            if x.get("cpu_share")]
    return round(min(caps)) if caps and w["cps"] else None


def summarize_cps(windows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """New connections/s: best window of each shape (the generator's completed connections
    per second), the 3/1 ratio measured, each director's CPU per connection, and the ratio
    projected with a core per director."""
    best = {s: (max(ws, key=lambda w: w["cps"]) if ws else None) for s, ws in windows.items()}
    b3, b1 = best.get("3"), best.get("1")
    p3 = projected_cps(b3) if b3 else None
    p1 = projected_cps(b1) if b1 else None
    return {
        "best": best,
        "samples_cps": {s: [w["cps"] for w in ws] for s, ws in windows.items()},
        "cpu_us_per_conn": {s: cpu_us_per_conn(w) for s, w in best.items() if w},
        "projected_cps": {"3": p3, "1": p1},
        "cluster_cps_3": b3["cps"] if b3 else None,
        "cluster_cps_1": b1["cps"] if b1 else None,
        "cluster_cps_ratio": round(b3["cps"] / b1["cps"], 3) if b3 and b1 and b1["cps"] else None,
        "cluster_cps_projected_ratio": round(p3 / p1, 3) if p3 and p1 else None,
    }


def results(windows: dict[str, list[dict[str, Any]]],
            cps_windows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The part's result from both measures' windows: the packets/s figures at the top (the
    public keys among them), the connections/s ones under "cps" but for their keys."""
    cps = summarize_cps(cps_windows)
    return {**summarize(windows), "windows": windows,
            **{k: v for k, v in cps.items() if k.startswith("cluster_")},
            "cps": {"best": cps["best"], "samples": cps["samples_cps"], "windows": cps_windows,
                    "cpu_us_per_conn": cps["cpu_us_per_conn"], "projected": cps["projected_cps"],
                    "load": f"bench/gen.c tcp in the client (connect, one line, close; {CONNS} "
                            f"in flight) to VIP:{CPS_PORT}, bench/gen.c serve in every real server"}}


# -- the lab -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _lab() -> Iterator[dict[str, Any]]:
    from lab import cluster, topology
    try:
        # engine-mode services only, as the figures in docs/benchmarks.md were measured
        yield cluster.up(PREFIX, 3, extra_services=[udp_service(), tcp_service()], kernel=False)
    finally:
        res = topology.down(PREFIX)
        if res.get("errors"):
            print(f"bench: lab down {PREFIX}: {res['errors']}", file=sys.stderr)


def _rs_count(ns: str) -> int:
    import subprocess
    cp = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "counter", "inet",
                         RS_TABLE, "udpin"], capture_output=True, text=True, check=True)
    for item in json.loads(cp.stdout)["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise RuntimeError(f"no udpin counter in {ns}")


def _reading(info: dict[str, Any], pids: dict[str, int]) -> dict[str, Any]:
    t0 = time.monotonic()
    rs = {r["name"]: _rs_count(r["ns"]) for r in info["real_servers"]}
    verdicts = {}
    for d in info["directors"]:
        c = common.nfq_counters(d["ns"], 0)
        verdicts[d["name"]] = (c["id_sequence"] - c["user_dropped"] - c["length"]) if c else 0
    cpu = {n: common.proc_cpu_s(p) for n, p in pids.items()}
    return {"t": (t0 + time.monotonic()) / 2, "rs": rs, "verdicts": verdicts, "cpu_s": cpu}


def _window(info: dict[str, Any], pids: dict[str, int], seconds: float,
            warm: float) -> dict[str, Any]:
    vip, client_ns = info["vip"], info["client"]["ns"]

    def gen(dst: str, port: int, secs: float) -> dict[str, Any]:
        return cgen.run_gen(client_ns, "udp", dst=dst, port=port, seconds=secs,
                            flows=FLOWS, size=SIZE, batch=32)

    th, box, t0 = common.generator_in_background(gen, vip, UDP_PORT, seconds)
    time.sleep(warm)
    r1, c1 = _reading(info, pids), common.cpu_times()
    time.sleep(max(0.5, t0 + seconds - 0.3 - time.monotonic()))
    r2, c2 = _reading(info, pids), common.cpu_times()
    th.join(seconds + 20)
    out = window_figures(r1, r2)
    out["cpu_busy"] = common.cpu_busy(c1, c2)
    out["offered_pps"] = (box.get("gen") or {}).get("pps")
    if box.get("error"):
        out["generator_error"] = box["error"]
    return out


def _cps_window(info: dict[str, Any], pids: dict[str, int], seconds: float) -> dict[str, Any]:
    """bench/gen.c tcp (connect, one line, close; CONNS in flight) from the client to
    VIP:CPS_PORT for `seconds`: its connections/s, and each director's share of the
    packets (queue verdicts) and its node's CPU over the run."""
    r1, c1 = _reading(info, pids), common.cpu_times()
    g = cgen.run_gen(info["client"]["ns"], "tcp", dst=info["vip"], port=CPS_PORT,
                     seconds=seconds, conns=CONNS, timeout=2)
    r2, c2 = _reading(info, pids), common.cpu_times()
    fig = window_figures(r1, r2)
    return {"cps": round(g["cps"]), "ok": g.get("ok"), "errors": g.get("errors"),
            "window_s": fig["window_s"], "directors": fig["directors"],
            "cpu_busy": common.cpu_busy(c1, c2)}


def _shape(prefix: str, info: dict[str, Any], shape: str, wait: float = 20.0) -> float:
    """Put the cluster into `shape` ("3": drains cancelled; "1": b and c drained); the
    seconds until the router's route to the VIP had exactly the expected next hops."""
    from lab import bgp, cluster
    for name in WITHDRAWN:
        if shape == "1":
            cluster.fault(prefix, name, "drain")
        else:
            cluster.fault(prefix, name, "restore")
    keep = [d["front_addr"] for d in info["directors"]
            if shape == "3" or d["name"] not in WITHDRAWN]
    return bgp.wait_nexthops(prefix, info["vip"], keep, wait=wait)


def run(quick: bool = False) -> dict[str, Any]:
    from lab import state as st
    t0 = time.monotonic()
    rounds = 1 if quick else 3
    seconds = 2.5 if quick else 4.0
    out: dict[str, Any] = {
        "rounds": rounds, "window_seconds": seconds, "flows": FLOWS, "payload_bytes": SIZE,
        "load": f"bench/gen.c udp in the client, {FLOWS} flows, {SIZE}-byte payloads, CPU "
                f"{cgen.LOAD_CPU}; counted at the real servers (nft counter, dropped)",
        "shapes": {"3": "a, b, c announce the VIP (router ECMP)",
                   "1": "b and c drained (VIP withdrawn, nodes up and in sync); a alone"},
        "placement": f"generator on CPU {cgen.LOAD_CPU}; the directors' nodes unpinned, "
                     f"sharing the machine's {os.cpu_count()} cores",
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    if cgen.binary() is None:
        return {**out, "error": "no C compiler: generator unavailable", "seconds": 0}
    windows: dict[str, list[dict[str, Any]]] = {s: [] for s in SHAPES}
    cps_windows: dict[str, list[dict[str, Any]]] = {s: [] for s in SHAPES}
    switch_s: list[float] = []
    servers = []
    with _lab() as info:
        try:
            for r in info["real_servers"]:
                cgen.nft(r["ns"], RS_SCRIPT)
                servers.append(cgen.start(r["ns"], [str(cgen.binary()), "serve", "--port",
                                                    str(CPS_PORT), "--name", r["name"],
                                                    "--seconds", str(int(60 * rounds + 60))]))
            state = st.load_state(PREFIX) or {}
            pids = {p["name"][len("node-"):]: int(p["pid"]) for p in state.get("processes", [])
                    if str(p.get("name", "")).startswith("node-")}
            for i in range(rounds):
                for shape in SHAPES:
                    switch_s.append(round(_shape(PREFIX, info, shape), 3))
                    windows[shape].append({**_window(info, pids, seconds, 1.0), "round": i})
                    cps_windows[shape].append({**_cps_window(info, pids, seconds - 1.0), "round": i})
            _shape(PREFIX, info, "3")
            out["status_after"] = {d["name"]: _cluster_status(d["name"]) for d in info["directors"]}
        finally:
            for pr in servers:
                cgen.stop(pr)
    out.update(results(windows, cps_windows))
    out["route_switch_s"] = switch_s
    out["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


def _cluster_status(name: str) -> dict[str, Any] | None:
    from lab import cluster
    try:
        c = cluster.status(PREFIX, name, timeout=2.0).get("cluster") or {}
    except Exception as exc:  # noqa: BLE001 - informational
        return {"error": repr(exc)}
    return {k: c.get(k) for k in ("state", "announced", "flows_owned", "flows_foreign")}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=1))
