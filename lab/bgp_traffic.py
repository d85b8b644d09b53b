"""Traffic through the BGP lab's ECMP route (lab/bgp.py): a client behind the router, and
on every director the VIP on `lo` with an echo server that answers WHOAMI with the
director's name, so a connection says which director the router's hash sent it to.

No tandem node runs here: this shows what the router does with the VIP's multipath
route (how it spreads flows, how many move when a director leaves or comes back), which
is the problem cluster mode's synced state must cover (docs/cluster.md).  The client
and the echo servers are recorded in the lab's state file and stopped by `bgp.down`.
"""
from __future__ import annotations

import errno
import random
import subprocess
from typing import Any

from . import bgp, netns, nsutil, procs
from . import state as st

CLIENT_ADDR, ROUTER_CLIENT_ADDR = "198.19.44.10", "198.19.44.1"
ECHO_PORT = 8080


def add_client(prefix: str) -> str:
    """The client namespace, wired to the router (198.19.44.0/24), default route via it."""
    state = st.load_state(prefix) or {}
    ns, router = bgp.ns_name(prefix, "client"), bgp.ns_name(prefix, "router")
    if ns not in nsutil.list_netns():
        from pyroute2 import netns as _netns
        _netns.create(ns)
    if ns not in state.setdefault("namespaces", []):
        state["namespaces"].append(ns)
        st.save_state(prefix, state)
    nsutil.set_sysctls(ns, {"net.ipv6.conf.all.disable_ipv6": 1,
                            "net.ipv4.tcp_tw_reuse": 1}, optional=True)
    with netns.ipr(ns) as i:
        if not i.link_lookup(ifname="eth0"):
            i.link("add", ifname="eth0", kind="veth", peer={"ifname": "client", "net_ns_fd": router})
            i.addr("add", index=netns.idx(i, "eth0"), address=CLIENT_ADDR, prefixlen=24)
        for name in ("lo", "eth0"):
            i.link("set", index=netns.idx(i, name), state="up")
        _route_default(i, ROUTER_CLIENT_ADDR)
    with netns.ipr(router) as i:
        index = netns.idx(i, "client")
        if not i.get_addr(index=index):
            i.addr("add", index=index, address=ROUTER_CLIENT_ADDR, prefixlen=24)
        i.link("set", index=index, state="up")
    return ns


def _route_default(i, gateway: str) -> None:
    try:
        i.route("add", dst="default", gateway=gateway)
    except Exception as exc:  # noqa: BLE001 - already there is fine
        if getattr(exc, "code", None) != errno.EEXIST:
            raise


def serve_vip(prefix: str, names: list[str], wait: float = 10.0) -> None:
    """On each director: the VIP on `lo`, a default route via the router (replies to the
    client), and an echo server on VIP:8080 answering WHOAMI with the director's name."""
    state = st.load_state(prefix) or {}
    for name in names:
        ns = bgp.ns_name(prefix, name)
        with netns.ipr(ns) as i:
            lo = netns.idx(i, "lo")
            if not any(a.get_attr("IFA_ADDRESS") == bgp.VIP for a in i.get_addr(index=lo)):
                i.addr("add", index=lo, address=bgp.VIP, prefixlen=32)
            _route_default(i, bgp.ROUTER_ADDR)
    procs.start_echoes(prefix, state, [procs.Echo(n, bgp.ns_name(prefix, n), bgp.VIP, f"echo-{n}",
                                                  f"echo-{n}.log") for n in names],
                       ECHO_PORT, wait, what="echo on")


def whoami(prefix: str, count: int = 300, concurrency: int = 10) -> dict[str, Any]:
    """`count` TCP connections from the client to VIP:8080; the lab client's JSON report
    (its `by_server` counts connections per director)."""
    from .testing import run_in
    return run_in(bgp.ns_name(prefix, "client"), "tcp-whoami", "--host", bgp.VIP,
                  "--port", ECHO_PORT, "--count", count, "--concurrency", concurrency,
                  timeout=120)


def flows(k: int, seed: int = 1) -> list[int]:
    """`k` distinct client source ports: the flows whose router choice is compared."""
    return random.Random(seed).sample(range(10000, 65000), k)


def router_choice(prefix: str, sports: list[int]) -> dict[int, str]:
    """The next hop the router's kernel picks for each flow client:sport -> VIP:8080 (TCP),
    as it would forward it (`ip route get ... iif client`, one `ip -batch`)."""
    lines = "".join(f"route get {bgp.VIP} from {CLIENT_ADDR} iif client ipproto tcp "
                    f"sport {p} dport {ECHO_PORT}\n" for p in sports)
    cp = subprocess.run(["ip", "-n", bgp.ns_name(prefix, "router"), "-batch", "-"], input=lines,
                        capture_output=True, text=True, timeout=60, check=True)
    hops = [ln.split(" via ")[1].split()[0] for ln in cp.stdout.splitlines() if " via " in ln]
    if len(hops) != len(sports):
        raise RuntimeError(f"ip route get: {len(hops)} answers for {len(sports)} flows")
    return dict(zip(sports, hops))


def moved(before: dict[int, str], after: dict[int, str]) -> dict[str, float]:
    """Of the flows, the share that changed director, and the share of those whose
    director was still there (moved by the reshuffle alone)."""
    kept = set(after.values())
    changed = [p for p in before if before[p] != after[p]]
    needless = [p for p in changed if before[p] in kept]
    n = len(before)
    return {"moved": round(len(changed) / n, 4), "moved_needlessly": round(len(needless) / n, 4)}
