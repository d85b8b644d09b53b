"""Building the lab's namespaces: links, bridges, addresses, routes and sysctls (pyroute2).

Sysctls are written from a thread that entered the namespace (lab.nsutil). What is built
is recorded in the state file as soon as it exists, so a half-built lab can be removed.
"""

from __future__ import annotations

import errno
import time
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as _netns

from . import nsutil
from . import state as st
from .plan import (BACK_IF, CLIENT_ADDR, DIRECTORS, FRONT_IF, KERNEL_LADDRS, KERNEL_VIP, LADDRS,
                   PREFERRED, REAL_SERVERS, ROLES, ROUTER_CLIENT_ADDR, ROUTER_FRONT_ADDR, VIP,
                   ns_name)
from .plan6 import LADDRS6, ROUTER_FRONT6, VIP6

#: sysctls of each kind of namespace, written once it exists (before its interfaces)
NS_SYSCTLS: dict[str, dict[str, Any]] = {
    "sw": {
        "net.bridge.bridge-nf-call-iptables": 0,
        "net.bridge.bridge-nf-call-ip6tables": 0,
        "net.bridge.bridge-nf-call-arptables": 0,
    },
    "router": {
        "net.ipv4.ip_forward": 1,
        "net.ipv4.conf.all.rp_filter": 0,
        "net.ipv4.conf.default.rp_filter": 0,
    },
    "director": {
        "net.ipv4.ip_forward": 1,
        "net.ipv4.conf.all.rp_filter": 0,
        "net.ipv4.conf.default.rp_filter": 0,
        "net.ipv4.conf.all.accept_local": 1,
        "net.ipv4.conf.default.accept_local": 1,
        "net.ipv4.conf.all.arp_ignore": 1,
        "net.ipv4.conf.all.arp_announce": 2,
    },
}
#: the lab is IPv4 only: keep IPv6 (DAD, router solicitations, MLD) off the bridges
BASE_SYSCTLS = {"net.ipv6.conf.all.disable_ipv6": 1, "net.ipv6.conf.default.disable_ipv6": 1}
#: the client makes many short connections to the same VIP:port
CLIENT_SYSCTLS = {"net.ipv4.tcp_tw_reuse": 1, "net.ipv4.ip_local_port_range": "10000 65000"}


def ipr(ns: str) -> IPRoute:
    return IPRoute(netns=ns, flags=0)  # flags=0: fail rather than create a missing namespace


def idx(ipr_: IPRoute, ifname: str) -> int:
    found = ipr_.link_lookup(ifname=ifname)
    if not found:
        raise RuntimeError(f"interface {ifname} not found in {ipr_.status.get('netns')}")
    return found[0]


def _veth(ns: str, ifname: str, peer_ns: str, peer_name: str) -> None:
    """veth pair ifname (in ns) <-> peer_name (in peer_ns), created inside ns (names are local)."""
    with ipr(ns) as i:
        i.link("add", ifname=ifname, kind="veth", peer={"ifname": peer_name, "net_ns_fd": peer_ns})


def _link_up(i: IPRoute, ifname: str) -> None:
    i.link("set", index=idx(i, ifname), state="up")


def _addr(i: IPRoute, ifname: str, address: str, prefixlen: int) -> None:
    i.addr("add", index=idx(i, ifname), address=address, prefixlen=prefixlen)


def _sysctls(N: dict[str, str]) -> None:
    for role in ROLES:
        nsutil.set_sysctls(N[role], BASE_SYSCTLS, optional=True)
    nsutil.set_sysctls(N["sw"], NS_SYSCTLS["sw"], optional=True)
    nsutil.set_sysctls(N["router"], NS_SYSCTLS["router"])
    for d in DIRECTORS:
        nsutil.set_sysctls(N[d["name"]], NS_SYSCTLS["director"])
    nsutil.set_sysctls(N["client"], CLIENT_SYSCTLS, optional=True)


def _interface_sysctls(N: dict[str, str]) -> None:
    nsutil.set_sysctls(N["router"],
                       {"net.ipv4.conf.client.rp_filter": 0, "net.ipv4.conf.front.rp_filter": 0})
    for d in DIRECTORS:
        vals: dict[str, Any] = {}
        for ifn in (FRONT_IF, BACK_IF, "lo"):
            vals[f"net.ipv4.conf.{ifn}.rp_filter"] = 0
            vals[f"net.ipv4.conf.{ifn}.accept_local"] = 1
        nsutil.set_sysctls(N[d["name"]], vals)


def _wire(N: dict[str, str]) -> None:
    """The switch's two bridges, and a veth from every endpoint into the switch or router."""
    with ipr(N["sw"]) as i:
        for br in ("br-front", "br-back"):
            i.link("add", ifname=br, kind="bridge")
        _link_up(i, "lo")
    _veth(N["client"], "eth0", N["router"], "client")
    _veth(N["router"], "front", N["sw"], "r-front")
    for d in DIRECTORS:
        _veth(N[d["name"]], FRONT_IF, N["sw"], f"{d['name']}-front")
        _veth(N[d["name"]], BACK_IF, N["sw"], f"{d['name']}-back")
    for r in REAL_SERVERS:
        _veth(N[r["name"]], "eth0", N["sw"], f"{r['name']}-back")
    ports = {"br-front": ["r-front"] + [f"{d['name']}-front" for d in DIRECTORS],
             "br-back": [f"{d['name']}-back" for d in DIRECTORS]
             + [f"{r['name']}-back" for r in REAL_SERVERS]}
    with ipr(N["sw"]) as i:
        for br, members in ports.items():
            bri = idx(i, br)
            for m in members:
                i.link("set", index=idx(i, m), master=bri)
                _link_up(i, m)
            _link_up(i, br)


def _address(N: dict[str, str], pair: bool) -> None:
    with ipr(N["client"]) as i:
        _link_up(i, "lo")
        _addr(i, "eth0", CLIENT_ADDR, 24)
        _link_up(i, "eth0")
        i.route("add", dst="default", gateway=ROUTER_CLIENT_ADDR)
    with ipr(N["router"]) as i:
        _link_up(i, "lo")
        _addr(i, "client", ROUTER_CLIENT_ADDR, 24)
        _addr(i, "front", ROUTER_FRONT_ADDR, 24)
        _link_up(i, "client")
        _link_up(i, "front")
    for d in DIRECTORS:
        with ipr(N[d["name"]]) as i:
            _link_up(i, "lo")
            _addr(i, FRONT_IF, d["front_addr"], 24)
            _addr(i, BACK_IF, d["back_addr"], 24)
            if d["name"] == PREFERRED and not pair:
                # without the pair, one director holds the VIP and the local addresses;
                # with it, the elected master's node adds them itself
                for vip in (VIP, KERNEL_VIP):
                    _addr(i, FRONT_IF, vip, 32)
                for la in LADDRS + KERNEL_LADDRS:
                    _addr(i, BACK_IF, la, 32)
            _link_up(i, FRONT_IF)
            _link_up(i, BACK_IF)
            i.route("add", dst="default", gateway=ROUTER_FRONT_ADDR)
    for r in REAL_SERVERS:
        with ipr(N[r["name"]]) as i:
            _link_up(i, "lo")
            _addr(i, "eth0", r["addr"], 24)
            _link_up(i, "eth0")


def build(prefix: str, state: dict[str, Any]) -> None:
    """Create and wire every namespace of the plan; state["ha"] says whether a pair will run."""
    N = {r: ns_name(prefix, r) for r in ROLES}
    for role in ROLES:  # each recorded as soon as it exists
        _netns.create(N[role])
        state["namespaces"].append(N[role])
        st.save_state(prefix, state)
    _sysctls(N)
    _wire(N)
    _interface_sysctls(N)  # now that the interfaces exist
    _address(N, bool(state.get("ha")))


def _route_back(i: IPRoute, gateway: str, family: int) -> None:
    try:
        i.route("add", dst="default" if family == 2 else "::/0", gateway=gateway, family=family)
    except Exception as exc:  # noqa: BLE001 - already there is fine
        if "exists" not in str(exc).lower() and getattr(exc, "code", None) != errno.EEXIST:
            raise


def set_links(prefix: str, name: str, up: bool) -> float:
    """Set both links of a director; returns the wall time just before the change
    (the netlink socket and indexes are ready by then, so it is the fault's time)."""
    ipv6 = bool((st.load_state(prefix) or {}).get("ipv6"))
    with ipr(ns_name(prefix, name)) as i:
        ids = [idx(i, ifn) for ifn in (FRONT_IF, BACK_IF)]
        at = time.time()
        for n in ids:
            i.link("set", index=n, state="up" if up else "down")
        if up:
            # the kernel flushed the default route with its link; a host's network
            # configuration would put it back, so the lab does
            _route_back(i, ROUTER_FRONT_ADDR, 2)
            if ipv6:
                _route_back(i, ROUTER_FRONT6, 10)
    return at


def strip_service_addresses(prefix: str, name: str) -> None:
    """Remove a VIP or laddr a killed node left behind (it never got to release them)."""
    with ipr(ns_name(prefix, name)) as i:
        for ifn, addrs in ((FRONT_IF, [VIP, KERNEL_VIP, VIP6]),
                           (BACK_IF, LADDRS + KERNEL_LADDRS + LADDRS6)):
            n = idx(i, ifn)
            for a in addrs:
                try:
                    i.addr("del", index=n, address=a, prefixlen=128 if ":" in a else 32)
                except Exception:  # noqa: BLE001 - not there: nothing to strip
                    pass


def remove(names: list[str]) -> tuple[list[str], list[str]]:
    """Delete those of `names` that exist: (removed, errors)."""
    present = set(nsutil.list_netns())
    removed, errors = [], []
    for n in names:
        if n not in present:
            continue
        try:
            _netns.remove(n)
            removed.append(n)
        except OSError as exc:
            errors.append(f"netns {n}: {exc!r}")
    return removed, errors


def pids(names: list[str]) -> dict[str, list[int]]:
    """The processes inside each of `names` (for a report; nothing is signalled)."""
    return {n: p for n, p in _netns.ns_pids().items() if n in names}
