"""A BGP/ECMP lab with a real daemon: one router and N directors, each running BIRD 2.

::

    {p}-router  br0 198.19.40.1/24  (BIRD: a BGP session per director, BFD, kernel
        │                            protocol with `merge paths`: ECMP multipath routes)
        ├── {p}-a  eth0 198.19.40.11/24   BIRD announces the VIP and its own laddr /32
        ├── {p}-b  eth0 198.19.40.12/24
        └── {p}-c  eth0 198.19.40.13/24   ...

The router is AS 65000, every director AS 65001 (one anycast origin), so the VIP's
routes from all directors are equally good and the router installs one route with a
next hop per director.  The router sends every director the routes it holds from the
others, every path (ADD-PATH), and each director keeps them in its session's import
table, never in a routing table: the router's view, from which a node reads which peers
the router still routes via (ha/bird.py, docs/cluster.md section 6).  Same-AS routes
coming back need `allow local as` on the directors' sessions.  Each director's
announcements come from the include file of ha/bird.py, so this lab exercises the same
file and `birdc configure` a node's BIRD adapter uses.  Addresses are in 198.19.40.0/22,
away from the main lab's (lab/plan.py) and the other lab tests'.

Config text is built by pure functions (``router_config``, ``director_config``); ``up``
builds namespaces and starts the daemons, recording every namespace and PID in the
lab's state file (lab/state.py) before anything waits on it; ``down`` stops them by
PID and deletes the namespaces by name.  Callers hold the lab lock.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import netns as _netns

from ha import bird
from ha.bird_io import BirdAnnouncer

from . import bgp6, netns, nsutil, procs
from . import state as st

NET = ipaddress.ip_network("198.19.40.0/24")
ROUTER_ADDR = "198.19.40.1"
VIP = "198.19.41.100"
LADDR_NET = ipaddress.ip_network("198.19.42.0/24")
ROUTER_AS, DIRECTOR_AS = 65000, 65001
BRIDGE = "br0"
MAX_DIRECTORS = 8


@dataclass(frozen=True)
class Timers:
    """BGP and BFD timers of the lab's sessions (BIRD's minimum hold time is 3 s)."""
    hold: int = 3                 # s
    keepalive: int = 1            # s
    bfd: bool = True
    bfd_interval_ms: int = 100    # min rx and tx interval
    bfd_multiplier: int = 3       # missed packets before the session is down


def director_rows(n: int) -> list[dict[str, str]]:
    """Directors a, b, c, ...: their address on the router's segment and their laddr."""
    if not 1 <= n <= MAX_DIRECTORS:
        raise ValueError(f"a BGP lab has 1 to {MAX_DIRECTORS} directors, not {n}")
    return [{"name": chr(ord("a") + i), "addr": str(NET[11 + i]),
             "laddr": str(LADDR_NET[11 + i])} for i in range(n)]


def _bfd_block(t: Timers) -> list[str]:
    if not t.bfd:
        return []
    return ["protocol bfd {",
            '  interface "*" {',
            f"    min rx interval {t.bfd_interval_ms} ms;",
            f"    min tx interval {t.bfd_interval_ms} ms;",
            f"    multiplier {t.bfd_multiplier};",
            "  };", "}"]


def _session_timers(t: Timers) -> list[str]:
    return [f"  hold time {t.hold};", f"  keepalive time {t.keepalive};",
            "  connect retry time 1;", "  error wait time 1, 5;",
            *(["  bfd on;"] if t.bfd else [])]


def router_config(directors: list[dict[str, str]], timers: Timers = Timers(),
                  ipv6: bool = False) -> str:
    """BIRD config of the router: learns from every director, installs the best routes
    into the kernel, equal ones merged into one multipath route, and sends each director
    every path it learnt from the others (ADD-PATH: the router's view, ha/bird.py).
    `ipv6`: an IPv6 session per director too, and their routes installed (lab/bgp6.py)."""
    lines = [f"router id {ROUTER_ADDR};",
             "protocol device { scan time 10; }",
             "protocol kernel {",
             "  ipv4 { import none; export all; };",
             f"  merge paths on limit {MAX_DIRECTORS};",
             "}",
             *_bfd_block(timers)]
    for d in directors:
        lines += [f"protocol bgp dir_{d['name']} {{",
                  f"  local {ROUTER_ADDR} as {ROUTER_AS};",
                  f"  neighbor {d['addr']} as {DIRECTOR_AS};",
                  *_session_timers(timers),
                  "  ipv4 { import all; add paths tx;",
                  f'         export where proto ~ "dir_*" && proto != "dir_{d["name"]}"; }};',
                  "}"]
    if ipv6:
        lines += bgp6.router_lines(directors, _session_timers(timers), ROUTER_AS, DIRECTOR_AS,
                                   MAX_DIRECTORS)
    return "\n".join(lines) + "\n"


def director_config(d: dict[str, str], include_path: str, timers: Timers = Timers(),
                    ipv6: bool = False) -> str:
    """BIRD config of a director: announces what the include holds (ha/bird.py), to the
    router only; no kernel protocol, so nothing BIRD learns or announces touches the
    director's own routing table.  What the router sends back (its view: the others'
    routes, every path) stays in the session's import table (`import table on`, imported
    into no routing table: `import none`).  `ipv6`: the IPv6 routes over an IPv6 session
    too."""
    lines = [f"router id {d['addr']};",
             "protocol device { scan time 10; }",
             f'include "{include_path}";',
             *_bfd_block(timers),
             "protocol bgp uplink {",
             f"  local {d['addr']} as {DIRECTOR_AS};",
             f"  neighbor {ROUTER_ADDR} as {ROUTER_AS};",
             "  allow local as;",
             *_session_timers(timers),
             f"  ipv4 {{ add paths rx; import table on; import none; {bird.export_filter(4)} }};",
             "}"]
    if ipv6:
        lines += bgp6.director_lines(d, _session_timers(timers), ROUTER_AS, DIRECTOR_AS)
    return "\n".join(lines) + "\n"


def check_config(path: Path) -> None:
    """`bird -p`: BIRD parses the file and exits; RuntimeError with its message if not."""
    cp = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True, timeout=10)
    if cp.returncode != 0:
        raise RuntimeError(f"bird -p {path}: {(cp.stderr or cp.stdout).strip()}")


# --- namespaces and daemons ---------------------------------------------------------


def ns_name(prefix: str, role: str) -> str:
    return f"{st.check_prefix(prefix)}-{role}"


def _files(prefix: str, role: str) -> dict[str, Path]:
    d = st.state_dir(prefix)
    return {k: d / f"bird-{role}.{k}" for k in ("conf", "ctl", "log", "announce")}


def birdc(prefix: str, role: str, *cmd: str, timeout: float = 5.0) -> str:
    """A birdc command to the daemon of `role`, over its control socket; its output."""
    cp = subprocess.run(["birdc", "-s", str(_files(prefix, role)["ctl"]), *cmd],
                        capture_output=True, text=True, timeout=timeout)
    return cp.stdout + cp.stderr


def announce(prefix: str, name: str, prefixes: list[str]) -> str:
    """Director `name` announces exactly `prefixes` from now on, through the node's BIRD
    adapter (ha/bird_io.py: the include rewritten, then `birdc configure`)."""
    f = _files(prefix, name)
    return BirdAnnouncer(f["announce"], f["ctl"]).apply(prefixes)


def clear_announcements(prefix: str, name: str) -> None:
    """Director `name`'s include says nothing (its BIRD, when it next reads it, withdraws
    or announces nothing)."""
    _files(prefix, name)["announce"].write_text(bird.announce_include([]))


def start_bird(prefix: str, state: dict[str, Any], role: str, wait: float = 10.0) -> dict:
    """BIRD in the foreground inside {prefix}-{role}, recorded by PID, then waited on
    (bounded) until its control socket answers."""
    f = _files(prefix, role)
    f["ctl"].unlink(missing_ok=True)
    cmd = ["bird", "-f", "-c", str(f["conf"]), "-s", str(f["ctl"])]
    rec = st.start_process(ns_name(prefix, role), f"bird-{role}", cmd, f["log"])
    procs.record(state, rec)
    st.save_state(prefix, state)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if "BIRD" in birdc(prefix, role, "show", "status", timeout=2) and f["ctl"].exists():
            return rec
        if not st.process_matches(rec):
            break
        time.sleep(0.1)
    raise RuntimeError(f"bird in {role} did not start: {f['log'].read_text()[-1000:]}")


def kill_bird(prefix: str, state: dict[str, Any], role: str) -> bool:
    """SIGKILL the daemon of `role` (by its recorded PID), host and links left alive:
    the kernel closes its TCP sessions, so the router hears of it at once.  True if it
    was running (and is gone now; bounded wait)."""
    rec = procs.find(state, f"bird-{role}")
    if rec is None or not st.process_matches(rec):
        return False
    os.kill(int(rec["pid"]), signal.SIGKILL)
    end = time.monotonic() + 5.0
    while st.process_matches(rec) and time.monotonic() < end:
        time.sleep(0.005)
    return True


def set_link(prefix: str, name: str, up: bool) -> None:
    with netns.ipr(ns_name(prefix, name)) as i:
        i.link("set", index=netns.idx(i, "eth0"), state="up" if up else "down")


def crash_director(prefix: str, state: dict[str, Any], name: str) -> float:
    """A director that dies without a word, as the lab's `kill` fault does it: its link
    goes down first (nothing it sends reaches the router any more, not even the TCP
    reset of its BGP session), then its BIRD is SIGKILLed.  Only the router's timers
    (BGP hold time, or BFD) can notice.  Returns the monotonic time of the link loss."""
    with netns.ipr(ns_name(prefix, name)) as i:
        index = netns.idx(i, "eth0")
        at = time.monotonic()
        i.link("set", index=index, state="down")
    kill_bird(prefix, state, name)
    return at


def restore_director(prefix: str, state: dict[str, Any], name: str,
                     prefixes: list[str]) -> None:
    """Link up, BIRD started again, `prefixes` announced."""
    set_link(prefix, name, True)
    start_bird(prefix, state, name)
    announce(prefix, name, prefixes)


def nexthops(prefix: str, dst: str) -> list[str]:
    """The router's next hops for `dst`/32 (or /128: one for a plain route, one per path
    of a multipath route; none if there is no route)."""
    family = f"-{ipaddress.ip_address(dst).version}"     # `ip` lists IPv4 routes unless told
    cp = subprocess.run(["ip", "-n", ns_name(prefix, "router"), family, "-j", "route", "show",
                         "exact", bird.host_prefix(dst)], capture_output=True, text=True,
                        timeout=5)
    routes = json.loads(cp.stdout or "[]")
    hops: list[str] = []
    for r in routes:
        if "nexthops" in r:
            hops += [h["gateway"] for h in r["nexthops"] if "gateway" in h]
        elif "gateway" in r:
            hops.append(r["gateway"])
    return sorted(hops, key=ipaddress.ip_address)


def wait_nexthops(prefix: str, dst: str, want: list[str], wait: float = 20.0,
                  poll: float = 0.02) -> float:
    """Poll the router until `dst`'s next hops are exactly `want`; the seconds it took.
    TimeoutError (naming what was there) after `wait`."""
    want = sorted(want, key=ipaddress.ip_address)
    t0 = time.monotonic()
    got: list[str] = []
    while time.monotonic() - t0 < wait:
        got = nexthops(prefix, dst)
        if got == want:
            return time.monotonic() - t0
        time.sleep(poll)
    raise TimeoutError(f"{dst} via {got} after {wait}s, wanted {want}")


def wait_until_via(prefix: str, dst: str, hop: str, wait: float = 20.0) -> float:
    """Poll the router until `hop` is one of `dst`'s next hops (whatever the others); the
    seconds it took.  TimeoutError after `wait`."""
    t0 = time.monotonic()
    while hop not in (got := nexthops(prefix, dst)):
        if time.monotonic() - t0 >= wait:
            raise TimeoutError(f"{dst} via {got} after {wait}s, not via {hop}")
        time.sleep(0.02)
    return time.monotonic() - t0


def _namespaces(prefix: str, directors: list[dict[str, str]]) -> list[str]:
    return [ns_name(prefix, "router")] + [ns_name(prefix, d["name"]) for d in directors]


def up(prefix: str, n: int = 3, timers: Timers = Timers(),
       announce_laddrs: bool = True, lab_announces: bool = True,
       director_birds: bool = True, ipv6: bool = False) -> dict[str, Any]:
    """Build the namespaces, start BIRD on the router and on every director, and have
    each director announce the VIP (and its laddr /32), unless `lab_announces` is False
    (the cluster lab: its nodes announce).  `director_birds` False: BIRD on the router
    only (a deployment brings the directors' own, tests/lab/test_ansible_cluster.py).
    `ipv6`: the segment has IPv6 addresses too and every director an IPv6 session
    (lab/bgp6.py).  Returns the description."""
    directors = director_rows(n)
    state = st.load_state(prefix) or {"prefix": prefix, "namespaces": [], "processes": []}
    sd = st.state_dir(prefix)
    sd.mkdir(parents=True, exist_ok=True)
    for ns in _namespaces(prefix, directors):
        if ns not in nsutil.list_netns():
            _netns.create(ns)
        if ns not in state["namespaces"]:
            state["namespaces"].append(ns)
        st.save_state(prefix, state)
        nsutil.set_sysctls(ns, bgp6.NS_SYSCTLS if ipv6 else {"net.ipv6.conf.all.disable_ipv6": 1},
                           optional=True)
    router = ns_name(prefix, "router")
    nsutil.set_sysctls(router, {"net.ipv4.ip_forward": 1,
                                "net.ipv4.fib_multipath_hash_policy": 1}, optional=True)
    with netns.ipr(router) as i:
        if not i.link_lookup(ifname=BRIDGE):
            i.link("add", ifname=BRIDGE, kind="bridge")
            i.addr("add", index=netns.idx(i, BRIDGE), address=ROUTER_ADDR, prefixlen=NET.prefixlen)
        for name in ("lo", BRIDGE):
            i.link("set", index=netns.idx(i, name), state="up")
    for d in directors:
        _wire_director(prefix, d)
    if ipv6:        # before BIRD starts: its IPv6 sessions find their addresses there
        bgp6.wire(router, BRIDGE, [(ns_name(prefix, d["name"]), d["addr"]) for d in directors])
    _files(prefix, "router")["conf"].write_text(router_config(directors, timers, ipv6))
    birds = directors if director_birds else []
    for d in birds:
        f = _files(prefix, d["name"])
        f["announce"].write_text(bird.announce_include([]))
        f["conf"].write_text(director_config(d, str(f["announce"]), timers, ipv6))
    for role in ["router"] + [d["name"] for d in birds]:
        check_config(_files(prefix, role)["conf"])
        start_bird(prefix, state, role)
    for d in birds if lab_announces else ():
        announce(prefix, d["name"], [VIP] + ([d["laddr"]] if announce_laddrs else []))
    return {"prefix": prefix, "vip": VIP, "router": {"ns": router, "addr": ROUTER_ADDR},
            "directors": [{**d, "ns": ns_name(prefix, d["name"])} for d in directors],
            "timers": timers.__dict__}


def add_director(prefix: str, state: dict[str, Any], directors: list[dict[str, str]],
                 timers: Timers = Timers(), ipv6: bool = False) -> None:
    """One more director on a running lab: `directors` are all of them now, the new one
    last (its namespace made and recorded by the caller).  Its link to the router's
    segment, its BIRD (announcing nothing until its node writes the include), and the
    router's BIRD told of its session (`birdc configure`: the sessions already up stay).
    `ipv6`: a lab brought up with it (its IPv6 address and session too)."""
    d = directors[-1]
    _wire_director(prefix, d)
    if ipv6:
        bgp6.wire(ns_name(prefix, "router"), BRIDGE, [(ns_name(prefix, d["name"]), d["addr"])])
    # the router first: the new BIRD's first connection then finds its neighbour configured,
    # where a refused one would wait out BIRD's connect retry and error wait (seconds)
    router = _files(prefix, "router")
    router["conf"].write_text(router_config(directors, timers, ipv6))
    check_config(router["conf"])
    said = birdc(prefix, "router", "configure")
    if "Reconfigured" not in said:
        raise RuntimeError(f"the router's BIRD did not take director {d['name']}: {said.strip()}")
    f = _files(prefix, d["name"])
    f["announce"].write_text(bird.announce_include([]))
    f["conf"].write_text(director_config(d, str(f["announce"]), timers, ipv6))
    check_config(f["conf"])
    start_bird(prefix, state, d["name"])


def _wire_director(prefix: str, d: dict[str, str]) -> None:
    ns, router = ns_name(prefix, d["name"]), ns_name(prefix, "router")
    with netns.ipr(ns) as i:
        if not i.link_lookup(ifname="eth0"):
            i.link("add", ifname="eth0", kind="veth",
                   peer={"ifname": f"d-{d['name']}", "net_ns_fd": router})
            i.addr("add", index=netns.idx(i, "eth0"), address=d["addr"], prefixlen=NET.prefixlen)
        for name in ("lo", "eth0"):
            i.link("set", index=netns.idx(i, name), state="up")
    with netns.ipr(router) as i:
        port = netns.idx(i, f"d-{d['name']}")
        i.link("set", index=port, master=netns.idx(i, BRIDGE))
        i.link("set", index=port, state="up")


def down(prefix: str) -> dict[str, Any]:
    """Stop every recorded BIRD by PID, delete the namespaces by name, drop the state."""
    state = st.load_state(prefix) or {}
    errors: list[str] = []
    for rec in state.get("processes") or []:
        if st.stop_process(rec) in ("survived", "error"):
            errors.append(f"{rec.get('name')} (pid {rec.get('pid')}) still runs")
    removed, errs = netns.remove(list(state.get("namespaces") or []))
    st.remove_state(prefix)
    return {"removed": removed, "errors": errors + errs}

