"""The cluster lab: `tandem lab up --cluster N` (lab/cluster_plan.py has every address).

N directors a, b, c, ... behind one router, each running BIRD 2 and `tandem node` in
cluster mode; the router runs BIRD too and installs the VIP as one ECMP route (a next
hop per director announcing it) and each laddr /32 via its owner (lab/bgp.py builds
that part, with no announcement of its own: the nodes announce).  A client behind the
router, three real servers behind it on a back segment with an echo server each::

    client 198.19.44.10 -- router 198.19.44.1 | br0 198.19.40.1 | back 198.19.46.1
                              a .11  b .12  c .13 ...  (on br0)   rs1..3 .21-.23 (on back)

Every director: its node's API on front_addr:9100, sync unicast on front_addr:8848 to
every other director (the same key), `[cluster] members` naming every director's laddr,
and BIRD's include and socket in the lab's state directory.  The router's reverse-path
filter is off: a director forwards a peer's flow with the peer's laddr as source
(docs/cluster.md, "Foreign flows"), which the router routes back to the owner.

Faults (`tandem lab fault <name> kill|crash|link|stop|drain|partition|restore`): kill is a
crash of the box (link down, then the node and its BIRD SIGKILLed), crash the node's alone
(SIGKILL; BIRD runs on and keeps announcing until `tandem cluster withdraw` runs at once,
as a service manager would after the node's exit), link takes the link down, stop is the node's
graceful stop (SIGTERM: it withdraws its routes first; BIRD stays), drain is the node's
drain (POST /cluster/drain: the VIP withdrawn, its laddrs kept while it has flows),
partition drops every sync datagram in and out of it (still routed: its peers hear it no
more and it hears nobody, but the router's view keeps its laddrs its own), restore lifts a
partition, cancels a drain, brings the link up and starts whatever is not running.  `tandem lab down` removes it all (the
processes by PID, the namespaces by name: topology.down).  `tandem lab join <name>` adds a
director to the running lab (lab/cluster_join.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from pyroute2 import netns as _netns

from ha.bird import host_prefix

from . import bgp, bgp_traffic, cluster6, cluster_plan as cp, netns, nsutil, procs
from . import state as st
from .cluster_conf import (API_PORT, HEALTH, RS_PORT, SERVICE_PORT, SYNC_PORT,  # noqa: F401
                           node_config, write_configs)
from .plan import API_TOKEN

BACK_BRIDGE = "back"
#: what `tandem lab fault <name> ...` does to a cluster director
FAULTS = ("kill", "crash", "link", "stop", "drain", "partition", "restore")
#: the longest the crash fault waits for the survivors to count the crashed node silent
#: (before the withdrawal), and to announce its laddrs (after it)
ADOPTION_WAIT = 3.0
#: the nftables tables (in the director's namespace) of the partition fault, by hook
PARTITION_TABLES = {"input": "tandem_lab_part_in", "output": "tandem_lab_part_out"}


def ensure_ns(state: dict[str, Any], ns: str) -> None:
    if ns not in nsutil.list_netns():
        _netns.create(ns)
    if ns not in state.setdefault("namespaces", []):
        state["namespaces"].append(ns)


def _build_back(prefix: str, desc: dict[str, Any]) -> None:
    """The router's back segment (a bridge) and a namespace per real server on it."""
    state = st.load_state(prefix) or {}
    router = bgp.ns_name(prefix, "router")
    with netns.ipr(router) as i:
        if not i.link_lookup(ifname=BACK_BRIDGE):
            i.link("add", ifname=BACK_BRIDGE, kind="bridge")
            i.addr("add", index=netns.idx(i, BACK_BRIDGE), address=cp.ROUTER_BACK_ADDR,
                   prefixlen=cp.BACK_NET.prefixlen)
        i.link("set", index=netns.idx(i, BACK_BRIDGE), state="up")
    for r in desc["real_servers"]:
        ensure_ns(state, r["ns"])
        st.save_state(prefix, state)
        nsutil.set_sysctls(r["ns"], {"net.ipv6.conf.all.disable_ipv6": 1}, optional=True)
        with netns.ipr(r["ns"]) as i:
            if not i.link_lookup(ifname="eth0"):
                i.link("add", ifname="eth0", kind="veth",
                       peer={"ifname": f"r-{r['name']}", "net_ns_fd": router})
                i.addr("add", index=netns.idx(i, "eth0"), address=r["addr"],
                       prefixlen=cp.BACK_NET.prefixlen)
            for ifname in ("lo", "eth0"):
                i.link("set", index=netns.idx(i, ifname), state="up")
            bgp_traffic._route_default(i, cp.ROUTER_BACK_ADDR)
        with netns.ipr(router) as i:
            port = netns.idx(i, f"r-{r['name']}")
            i.link("set", index=port, master=netns.idx(i, BACK_BRIDGE))
            i.link("set", index=port, state="up")


def _start_echo(prefix: str, state: dict[str, Any], desc: dict[str, Any], wait: float) -> None:
    procs.start_echoes(prefix, state, [procs.Echo(r["name"], r["ns"], None, f"echo-{r['name']}",
                                                  f"{r['name']}.log")
                                       for r in desc["real_servers"]], RS_PORT, wait)


def start_node(prefix: str, state: dict[str, Any], name: str, wait: float = 20.0) -> dict:
    """Director `name`'s node, recorded by PID, waited on until its /status answers."""
    d = director(state, name)
    rec = st.start_process(d["ns"], f"node-{name}", procs.tandem_cmd(Path(state["configs"][name])),
                           st.state_dir(state["prefix"]) / f"{name}.log")
    procs.record(state, rec)
    st.save_state(prefix, state)
    end = time.monotonic() + wait
    while True:
        rc = st.process_exited(rec)
        if rc is not None:
            raise RuntimeError(f"node {name} exited with {rc} during start-up:\n"
                               + st.tail(rec["log"]))
        try:
            if status(prefix, name, state, timeout=0.5) is not None:
                st.note_cmdline(rec)
                st.save_state(prefix, state)
                return rec
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        if time.monotonic() >= end:
            raise TimeoutError(f"node {name}: /status not answering after {wait}s:\n"
                               + st.tail(rec["log"]))
        time.sleep(0.1)


def director(state: dict[str, Any], name: str) -> dict[str, Any]:
    for d in (state.get("cluster") or {}).get("directors", []):
        if d["name"] == name:
            return d
    raise ValueError(f"no director {name!r} in this cluster lab")


def status(prefix: str, name: str, state: dict[str, Any] | None = None,
           timeout: float = 1.0) -> dict[str, Any]:
    """GET /status of director `name`'s node, from inside its namespace."""
    d = director(state or st.load_state(prefix) or {}, name)
    code, body = nsutil.http_get(d["ns"], d["front_addr"], API_PORT, "/status", timeout=timeout)
    if code != 200:
        raise OSError(f"node {name}: HTTP {code}")
    return json.loads(body)


def _partition(ns: str, on: bool) -> None:
    """Drop every sync datagram in and out of namespace `ns` (on), or stop dropping."""
    for hook, table in PARTITION_TABLES.items():
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", table],
                       capture_output=True)
        if on:
            script = (f"table inet {table} {{ chain {hook} {{ type filter hook {hook} "
                      f"priority 0; udp dport {SYNC_PORT} counter drop; }}; }}\n")
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script,
                           text=True, check=True, capture_output=True)


def api(state: dict[str, Any], name: str, method: str, path: str) -> dict[str, Any]:
    d = director(state, name)
    code, body = nsutil.http_call(d["ns"], d["front_addr"], API_PORT, path, method)
    if code != 200:
        raise OSError(f"node {name}: {method} {path}: HTTP {code} {body[:200]!r}")
    return json.loads(body)


def routes(prefix: str, desc: dict[str, Any]) -> dict[str, list[str]]:
    """The router's routes now: the VIPs' next hops and each laddr's."""
    dsts = cp.vips(desc) + [a for d in desc["directors"] for a in d["laddrs"]]
    return {host_prefix(dst): bgp.nexthops(prefix, dst) for dst in dsts}


def up(prefix: str, n: int = 3, wait: float = 30.0,
       extra_services: list[dict[str, Any]] | None = None,
       kernel: bool = True, nodes: bool = True, ipv6: bool = False) -> dict[str, Any]:
    """Build the cluster lab of `n` directors (replacing a lab of the same prefix); its
    description (cluster_plan.plan, with the router's routes as they are).  On failure
    everything is removed again and the exception re-raised.  `extra_services`: see
    node_config (bench.cluster adds a UDP service).  `kernel`: the kernel-mode service
    (KERNEL_VIP) beside the engine-mode VIP.  `nodes` False: the network, the router's
    BIRD and the echo servers only, no node and no BIRD on any director (a deployment
    brings both: tests/lab/test_ansible_cluster.py).  `ipv6`: dual-stack, with an IPv6
    VIP (lab/cluster6.py)."""
    return nsutil.outside_event_loop(_up, prefix, n, wait, extra_services, kernel, nodes, ipv6)


def _up(prefix: str, n: int, wait: float,
        extra_services: list[dict[str, Any]] | None = None, kernel: bool = True,
        nodes: bool = True, ipv6: bool = False) -> dict[str, Any]:
    from . import topology
    desc = cp.plan(prefix, n, kernel, ipv6)
    topology.down(prefix)
    with st.prefix_lock(prefix):
        sd = st.state_dir(prefix)
        sd.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {"prefix": prefix, "created": time.time(), "namespaces": [],
                                 "processes": [], "configs": {}, "ha": False, "cluster": desc,
                                 "extra_services": list(extra_services or [])}
        st.save_state(prefix, state)
        try:
            bgp.up(prefix, n, lab_announces=False, director_birds=nodes, ipv6=ipv6)
            router = bgp.ns_name(prefix, "router")
            nsutil.set_sysctls(router, {"net.ipv4.conf.all.rp_filter": 0,
                                        "net.ipv4.conf.default.rp_filter": 0}, optional=True)
            bgp_traffic.add_client(prefix)
            _build_back(prefix, desc)
            state = st.load_state(prefix)
            for d in desc["directors"]:
                nsutil.set_sysctls(d["ns"], {"net.ipv4.ip_forward": 1,
                                             "net.ipv4.conf.all.rp_filter": 0,
                                             "net.ipv4.conf.eth0.rp_filter": 0}, optional=True)
                with netns.ipr(d["ns"]) as i:
                    bgp_traffic._route_default(i, bgp.ROUTER_ADDR)
            if ipv6:
                cluster6.build(desc)
            write_configs(prefix, state)
            st.save_state(prefix, state)
            _start_echo(prefix, state, desc, wait)
            if ipv6:
                cluster6.start_echo(prefix, state, desc, wait)
            for d in desc["directors"] if nodes else ():
                start_node(prefix, state, d["name"], wait)
            for vip in cp.vips(desc) if nodes else ():
                bgp.wait_nexthops(prefix, vip, [cp.hop(d, vip) for d in desc["directors"]],
                                  wait=wait)
            info = {**desc, "state_dir": str(sd), "api_token": API_TOKEN}
            info["router"] = {**desc["router"], "routes": routes(prefix, desc)}
            info["directors"] = [{**d, "node": nodes} for d in desc["directors"]]
            info["processes"] = [{"name": p["name"], "ns": p["ns"], "pid": p["pid"]}
                                 for p in state["processes"]]
            state["info"] = info
            st.save_state(prefix, state)
            return info
        except BaseException:
            topology._down(prefix, keep_logs=True)
            raise


# -- faults ------------------------------------------------------------------------------

def node_running(state: dict[str, Any], name: str) -> dict | None:
    rec = procs.find(state, f"node-{name}")
    return rec if rec is not None and st.process_matches(rec) else None


def _sigkill_node(state: dict[str, Any], name: str, out: dict[str, Any]) -> None:
    rec = node_running(state, name)
    if rec is not None:
        os.kill(int(rec["pid"]), signal.SIGKILL)
        out["killed_pid"] = rec["pid"]
        end = time.monotonic() + 5.0
        while st.process_matches(rec) and time.monotonic() < end:
            time.sleep(0.005)


def _survivors_until(prefix: str, state: dict[str, Any], name: str,
                     done: Callable[[dict[str, dict]], bool]) -> dict[str, dict]:
    """The /status `cluster` of every survivor of crashed director `name` (those answering),
    polled until `done` says so of them, or for at most ADOPTION_WAIT."""
    end = time.monotonic() + ADOPTION_WAIT
    while True:
        views = {}
        for d in state["cluster"]["directors"]:
            if d["name"] != name and node_running(state, d["name"]) is not None:
                try:
                    views[d["name"]] = status(prefix, d["name"], state, timeout=0.5)["cluster"]
                except Exception:  # noqa: BLE001 - a survivor not answering: not counted
                    continue
        if done(views) or time.monotonic() >= end:
            return views
        time.sleep(0.05)


def withdraw_cmd(config: str) -> list[str]:
    """`tandem cluster withdraw --config FILE` (what a service manager runs after the node's
    exit: the role's unit's ExecStopPost)."""
    return procs.tandem_cmd(Path(config))[:-3] + ["cluster", "withdraw", "--config", config]


def _withdraw(state: dict[str, Any], name: str) -> dict[str, Any]:
    cp = subprocess.run(["ip", "netns", "exec", director(state, name)["ns"],
                         *withdraw_cmd(state["configs"][name])],
                        capture_output=True, text=True, timeout=60)
    return {"rc": cp.returncode, "said": (cp.stdout + cp.stderr).strip()}


def fault(prefix: str, name: str, kind: str, wait: float = 20.0,
          show_gap: bool = False) -> dict[str, Any]:
    """Fault `kind` (FAULTS) on director `name` of a cluster lab.  `show_gap` (crash): the
    withdrawal waits until every survivor hears the dead node no more (a test shows what a
    crash leaves unwithdrawn: the router still routes its laddrs via it, so none adopts
    them), and the adopters are reported after it; otherwise it runs at once, as a service
    manager's would."""
    return nsutil.outside_event_loop(_fault, prefix, name, kind, wait, show_gap)


def _fault(prefix: str, name: str, kind: str, wait: float,
           show_gap: bool = False) -> dict[str, Any]:
    with st.prefix_lock(prefix):
        state = st.load_state(prefix)
        if not state or not state.get("cluster"):
            raise RuntimeError(f"no cluster lab {prefix!r} is up (tandem lab up --cluster N)")
        director(state, name)
        out: dict[str, Any] = {"director": name, "fault": kind}
        if kind == "kill":       # a crash: the link first, then everything on the box
            out["at"] = time.time()
            bgp.set_link(prefix, name, False)
            _sigkill_node(state, name, out)
            bgp.kill_bird(prefix, state, name)
        elif kind == "crash":    # the node alone; BIRD runs on, announcing what it left
            out["at"] = time.time()
            _sigkill_node(state, name, out)
            if show_gap:    # the peers hear it no more, but the router still routes it
                silent = _survivors_until(prefix, state, name, lambda vs: bool(vs) and not any(
                    v["members"][name]["alive"] for v in vs.values()))
                out["silent_to"] = sorted(s for s, v in silent.items()
                                          if not v["members"][name]["alive"])
            out["routes_before_withdraw"] = routes(prefix, state["cluster"])
            out["withdraw"] = _withdraw(state, name)
            if show_gap:    # then a survivor adopts each of its laddrs
                has = lambda v, a: host_prefix(a) in (v["bird_has"] or [])  # noqa: E731
                pool = director(state, name)["laddrs"]
                views = _survivors_until(prefix, state, name, lambda vs: all(
                    any(has(v, a) for v in vs.values()) for a in pool))
                out["adopted_by"] = {a: next((s for s, v in views.items() if has(v, a)), None)
                                     for a in pool}
        elif kind == "link":
            out["at"] = time.time()
            bgp.set_link(prefix, name, False)
        elif kind == "stop":     # graceful: the node withdraws, then stops; BIRD stays
            out["at"] = time.time()
            rec = node_running(state, name)
            if rec is not None:
                out["stopped"] = st.stop_process(rec, term_wait=wait)
        elif kind == "drain":    # the node's drain: VIPs withdrawn, laddrs kept while it has flows
            out["at"] = time.time()
            out["cluster"] = api(state, name, "POST", "/cluster/drain")
        elif kind == "partition":   # cut from its peers' sync only: still routed, still up
            out["at"] = time.time()
            _partition(director(state, name)["ns"], True)
        elif kind == "restore":
            _partition(director(state, name)["ns"], False)
            if node_running(state, name) is not None:     # a drain is cancelled
                try:
                    api(state, name, "DELETE", "/cluster/drain")
                except OSError:
                    pass                # link down or node hung: the steps below restore it
            bgp.set_link(prefix, name, True)
            with netns.ipr(director(state, name)["ns"]) as i:   # the link's loss took it
                bgp_traffic._route_default(i, bgp.ROUTER_ADDR)
            if state["cluster"].get("vip6"):
                cluster6.default_route(director(state, name))
            bird = procs.find(state, f"bird-{name}")
            if bird is None or not st.process_matches(bird):
                if node_running(state, name) is None:
                    # the include still says what the killed node announced last; a BIRD
                    # started from it would announce the VIP and laddr before any node runs
                    # here, and the router's share of flows would be dropped until it does
                    # (up to 1.9 s seen): start it announcing nothing, the node writes it
                    bgp.clear_announcements(prefix, name)
                bgp.start_bird(prefix, state, name)
            if node_running(state, name) is None:
                out["restarted_pid"] = start_node(prefix, state, name, wait)["pid"]
            out["at"] = time.time()
        else:
            raise ValueError(f"a cluster fault is {', '.join(FAULTS)}, not {kind!r}")
        st.save_state(prefix, state)
        return out


def is_cluster(prefix: str) -> bool:
    state = st.load_state(prefix)
    return bool(state and state.get("cluster"))


def summary(info: dict[str, Any]) -> str:
    lines = [f"cluster lab {info['prefix']!r} is up: {len(info['directors'])} directors "
             f"(state and logs in {info['state_dir']})",
             f"  VIP {info['vip']}:{SERVICE_PORT} (maglev) -> real servers :{RS_PORT}",
             *([f"  VIP {info['kernel_vip']}:{SERVICE_PORT} (maglev, forwarding = \"kernel\": "
                f"the engine schedules each new flow, the kernel forwards the rest; "
                f"tandem drill --forwarding kernel drills it)"] if info.get("kernel_vip") else []),
             *([f"  VIP {info['vip6']} port {SERVICE_PORT} (maglev, IPv6, engine forwarding)"]
               if info.get("vip6") else []),
             f"  client    {info['client']['ns']:<16} {info['client']['addr']}",
             f"  router    {info['router']['ns']:<16} {info['router']['front_addr']} (BIRD, ECMP)"]
    for d in info["directors"]:
        lines.append(f"  director  {d['ns']:<16} {d['front_addr']}  laddrs "
                     f"{' '.join(d['laddrs'])}  api {d['api']}")
    for r in info["real_servers"]:
        lines.append(f"  real      {r['ns']:<16} {r['addr']}:{r['port']} (echo)")
    for dst, hops in info["router"]["routes"].items():
        lines.append(f"  route     {dst} via {' '.join(hops) or 'nothing'}")
    return "\n".join(lines)

