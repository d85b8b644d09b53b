"""IPv6 in the BGP/cluster lab (`tandem lab up --cluster N --ipv6`): the addresses, the BIRD
lines of the IPv6 sessions, and the namespaces' IPv6 set-up.  lab/bgp.py calls it when asked
for IPv6; without it the lab stays IPv4-only, as it always was.

::

    {p}-client  2001:2:0:44::10 ── client 2001:2:0:44::1   {p}-router
                                   br0    2001:2:0:40::1   (BIRD: a second, IPv6 session
                                   back   2001:2:0:46::1    per director; kernel6 merges)
    {p}-a  eth0 2001:2:0:40::11   {p}-b  ::12   {p}-c  ::13   ...
           VIP6 2001:2:0:41::100/128, laddrs6 2001:2:0:42::11 (a), ::12 (b), ::13 (c)
    rs1..3 2001:2:0:46::21..23

Every address mirrors its IPv4 one (the third group is the IPv4 third byte, the last one the
last byte), inside 2001:2:0:40::/61, which the pair lab's IPv6 plan (lab/plan6.py: the /64s
2001:2::, 2001:2:0:1::, 2001:2:0:2::) never touches.

Why a second session, not the IPv6 channel on the IPv4 one: a route's BGP next hop must be
an address of its own family for the router's kernel to use it without tricks, and BIRD sends
an IPv6 session's own address (and its link-local one) as the next hop of what it announces
there.  The router is told to prefer the global one (`next hop prefer global`), so its routes
name the director's address on the segment, as the IPv4 ones do.  BFD runs on these sessions
too (the one `protocol bfd` serves both families).
"""
from __future__ import annotations

import ipaddress
from typing import Any

from ha import bird

from . import netns, nsutil

RANGE6 = ipaddress.ip_network("2001:2:0:40::/61")
NET6 = ipaddress.ip_network("2001:2:0:40::/64")
ROUTER_ADDR6 = "2001:2:0:40::1"
VIP6 = "2001:2:0:41::100"
CLIENT_NET6 = ipaddress.ip_network("2001:2:0:44::/64")
ROUTER_CLIENT6, CLIENT6 = "2001:2:0:44::1", "2001:2:0:44::10"
BACK_NET6 = ipaddress.ip_network("2001:2:0:46::/64")
ROUTER_BACK6 = "2001:2:0:46::1"

#: a namespace's IPv6 switches before its interfaces exist: on, no duplicate address
#: detection (every address usable at once), no router advertisements (the routes are the
#: lab's), and addresses kept while a link is down (a fault's link loss must not take them)
NS_SYSCTLS = {f"net.ipv6.conf.{scope}.{key}": value for scope in ("all", "default")
              for key, value in (("disable_ipv6", 0), ("accept_dad", 0), ("accept_ra", 0),
                                 ("keep_addr_on_down", 1))}


def _mirror(net: str, last: str | int) -> str:
    return str(ipaddress.ip_address(f"{net}{last}"))


def addr6(v4: str) -> str:
    """The IPv6 address mirroring lab address `v4` (198.19.X.Y -> 2001:2:0:X::Y)."""
    _, _, third, last = v4.split(".")
    addr = _mirror(f"2001:2:0:{third}::", last)
    assert ipaddress.ip_address(addr) in RANGE6, addr
    return addr


def enable(ns: str, ifnames: list[str], forwarding: bool = False) -> None:
    """IPv6 on in namespace `ns` (built IPv4-only) and on its interfaces `ifnames`."""
    values: dict[str, int] = dict(NS_SYSCTLS)
    for ifn in ifnames:
        values |= {f"net.ipv6.conf.{ifn}.disable_ipv6": 0, f"net.ipv6.conf.{ifn}.accept_dad": 0,
                   f"net.ipv6.conf.{ifn}.accept_ra": 0, f"net.ipv6.conf.{ifn}.keep_addr_on_down": 1}
    if forwarding:
        values["net.ipv6.conf.all.forwarding"] = 1
    nsutil.set_sysctls(ns, values)


def add_address(ns: str, ifname: str, addr: str, prefixlen: int = 64) -> None:
    with netns.ipr(ns) as i:
        index = netns.idx(i, ifname)
        if not any(a.get_attr("IFA_ADDRESS") == addr for a in i.get_addr(index=index, family=10)):
            i.addr("add", index=index, address=addr, prefixlen=prefixlen)


def default_route(ns: str, gateway: str) -> None:
    """`ns`'s IPv6 default route via `gateway` (put back if a link's loss took it)."""
    with netns.ipr(ns) as i:
        i.route("replace", dst="::/0", gateway=gateway, family=10)


def wire(router_ns: str, bridge: str, directors: list[tuple[str, str]]) -> None:
    """The segment's IPv6 addresses: the router's on `bridge` (forwarding, multipath hashed
    on the ports too), each director's (ns, v4 address) mirrored on its eth0."""
    enable(router_ns, [bridge], forwarding=True)
    nsutil.set_sysctls(router_ns, {"net.ipv6.fib_multipath_hash_policy": 1}, optional=True)
    add_address(router_ns, bridge, ROUTER_ADDR6)
    for ns, v4 in directors:
        enable(ns, ["eth0"], forwarding=True)
        add_address(ns, "eth0", addr6(v4))


def router_lines(directors: list[dict[str, str]], session: list[str], router_as: int,
                 director_as: int, max_paths: int) -> list[str]:
    """The router's IPv6 half: a kernel protocol installing the IPv6 routes, equal ones
    merged into one multipath route, and an IPv6 session per director."""
    lines = ["protocol kernel kernel6 {",
             "  ipv6 { import none; export all; };",
             f"  merge paths on limit {max_paths};",
             "}"]
    for d in directors:
        lines += [f"protocol bgp dir6_{d['name']} {{",
                  f"  local {ROUTER_ADDR6} as {router_as};",
                  f"  neighbor {addr6(d['addr'])} as {director_as};",
                  *session,
                  "  ipv6 { import all; export none; next hop prefer global; };",
                  "}"]
    return lines


def director_lines(d: dict[str, str], session: list[str], router_as: int,
                   director_as: int) -> list[str]:
    """A director's IPv6 session: it announces the include's IPv6 routes (ha/bird.py)."""
    return ["protocol bgp uplink6 {",
            f"  local {addr6(d['addr'])} as {director_as};",
            f"  neighbor {ROUTER_ADDR6} as {router_as};",
            *session,
            f"  ipv6 {{ import none; {bird.export_filter(6)} }};",
            "}"]

