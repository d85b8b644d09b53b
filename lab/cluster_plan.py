"""The plan of the cluster lab (`tandem lab up --cluster N`, `tandem lab join`): every name,
address and expected route, as data; nothing here touches the system.

::

    {p}-client  eth0 198.19.44.10/24 ── client 198.19.44.1/24   {p}-router
                                         br0    198.19.40.1/24  (BIRD, ECMP)
                                         back   198.19.46.1/24 ── rs1..3 198.19.46.21..23
                 ┌───────────────────────┼─────────────────────┐
    {p}-a  eth0 198.19.40.11/24   {p}-b  198.19.40.12   {p}-c  198.19.40.13   ...
           VIP 198.19.41.100/32 on lo, laddrs 198.19.42.11/32 (a), .12 (b), .13 (c) on lo
           kernel-mode VIP 198.19.41.101, laddrs 198.19.43.11 (a), .12 (b), .13 (c)

Each director is single-homed on the router's segment: clients reach the VIP through the
router's multipath route (one next hop per director announcing it), and real servers,
which sit behind the router, reach each laddr through the /32 its owner announces, so a
reply always returns to the director that owns its laddr (or, after the owner died, to
the survivor that adopted it: ha/announce.py).  lab/bgp.py builds the routing half
(router and directors running BIRD) with these addresses, lab/cluster.py the rest; a
director joined later (lab/cluster_join.py) gets the addresses of its letter.

With `ipv6` (`tandem lab up --cluster N --ipv6`) every host has an IPv6 address too, the
mirror of its IPv4 one in 2001:2:0:40::/61 (lab/bgp6.py), and the lab an IPv6 VIP
(2001:2:0:41::100, engine forwarding) with an IPv6 laddr per director (2001:2:0:42::11, ...).
"""
from __future__ import annotations

import ipaddress
from typing import Any

from ha.bird import host_prefix

from . import bgp, bgp6
from . import state as st

CLIENT_NET = ipaddress.ip_network("198.19.44.0/24")
BACK_NET = ipaddress.ip_network("198.19.46.0/24")
ROUTER_CLIENT_ADDR, CLIENT_ADDR = str(CLIENT_NET[1]), str(CLIENT_NET[10])
ROUTER_BACK_ADDR = str(BACK_NET[1])
REAL_SERVERS = [{"name": f"rs{i}", "addr": str(BACK_NET[20 + i])} for i in (1, 2, 3)]
#: the kernel-mode service's VIP (`forwarding = "kernel"`, beside the engine-mode VIP) and
#: the range of each director's laddr for it (a kernel-mode service needs laddrs of its own:
#: docs/kernel-fast-path.md), the same last byte as its engine-mode laddr
KERNEL_VIP = "198.19.41.101"
KERNEL_LADDR_NET = ipaddress.ip_network("198.19.43.0/24")
#: the cluster lab's whole range: disjoint from the pair lab's (lab/plan.py) and the
#: other lab tests' (198.19.10-11, 198.19.20-21)
CLUSTER_RANGE = ipaddress.ip_network("198.19.40.0/21")


def plan(prefix: str, n: int, kernel: bool = True, ipv6: bool = False) -> dict[str, Any]:
    """The cluster lab of `n` directors, as `tandem lab up --cluster N --json` would list it:
    the directors under `directors` (as the pair lab does), plus the router's expected
    routes (the VIPs via every director, each laddr via its owner).  `kernel`: the
    kernel-mode service too (`kernel_vip`; each director's second laddr is its own).
    `ipv6`: an IPv6 VIP (`vip6`, engine forwarding) too, every host an IPv6 address beside
    its IPv4 one (`addr6`, `front_addr6`, ...), each director an IPv6 laddr (`laddr6`, last
    of its `laddrs`); lab/bgp6.py has the addresses."""
    p = st.check_prefix(prefix)
    rows = bgp.director_rows(n)
    directors = [_director(p, d, kernel, ipv6) for d in rows]
    desc: dict[str, Any] = {
        "prefix": p,
        "mode": "cluster",
        "vip": bgp.VIP,
        "kernel_vip": KERNEL_VIP if kernel else None,
        "client": {"ns": f"{p}-client", "addr": CLIENT_ADDR, "gateway": ROUTER_CLIENT_ADDR},
        "router": {
            "ns": f"{p}-router", "as": bgp.ROUTER_AS,
            "client_addr": ROUTER_CLIENT_ADDR, "front_addr": bgp.ROUTER_ADDR,
            "back_addr": ROUTER_BACK_ADDR,
        },
        "directors": directors,
        "real_servers": [{**r, "ns": f"{p}-{r['name']}", "port": 8080} for r in REAL_SERVERS],
    }
    if ipv6:
        desc["vip6"] = bgp6.VIP6
        desc["client"] |= {"addr6": bgp6.CLIENT6, "gateway6": bgp6.ROUTER_CLIENT6}
        desc["router"] |= {"client_addr6": bgp6.ROUTER_CLIENT6, "front_addr6": bgp6.ROUTER_ADDR6,
                           "back_addr6": bgp6.ROUTER_BACK6}
        for r in desc["real_servers"]:
            r["addr6"] = bgp6.addr6(r["addr"])
    desc["router"]["routes"] = {
        **{host_prefix(v): [hop(d, v) for d in directors] for v in vips(desc)},
        **{host_prefix(a): [hop(d, a)] for d in directors for a in d["laddrs"]}}
    return desc


def hop(d: dict[str, Any], dst: str) -> str:
    """Director `d`'s address the router reaches `dst` through: of `dst`'s family."""
    return d["front_addr6"] if ipaddress.ip_address(dst).version == 6 else d["front_addr"]


def _director(p: str, row: dict[str, str], kernel: bool, ipv6: bool = False) -> dict[str, Any]:
    kernel_laddr = str(KERNEL_LADDR_NET[int(row["laddr"].rsplit(".", 1)[1])]) if kernel else None
    d = {"name": row["name"], "ns": f"{p}-{row['name']}", "front_addr": row["addr"],
         "as": bgp.DIRECTOR_AS, "laddrs": [row["laddr"]] + ([kernel_laddr] if kernel else []),
         "kernel_laddr": kernel_laddr, "api": f"http://{row['addr']}:9100"}
    if ipv6:
        d["front_addr6"], d["laddr6"] = bgp6.addr6(row["addr"]), bgp6.addr6(row["laddr"])
        d["laddrs"].append(d["laddr6"])
    return d


def director(prefix: str, name: str, kernel: bool = True, ipv6: bool = False) -> dict[str, Any]:
    """Director `name` (a, b, ...) as the plan of a lab large enough to hold it lists it:
    what `tandem lab join <name>` adds."""
    index = ord(name) - ord("a") if len(name) == 1 else -1
    if not 0 <= index < bgp.MAX_DIRECTORS:
        raise ValueError(f"a cluster director is one of a..{chr(ord('a') + bgp.MAX_DIRECTORS - 1)}, "
                         f"not {name!r}")
    return _director(st.check_prefix(prefix), bgp.director_rows(index + 1)[index], kernel, ipv6)


def vips(desc: dict[str, Any]) -> list[str]:
    """The lab's VIPs: the engine-mode one, the kernel-mode one and the IPv6 one when it has
    them."""
    return [desc["vip"]] + [desc[k] for k in ("kernel_vip", "vip6") if desc.get(k)]


def addresses(desc: dict[str, Any]) -> list[str]:
    """Every IPv4 address the plan hands out (for the range and uniqueness checks)."""
    r = desc["router"]
    return ([*(v for v in vips(desc) if v != desc.get("vip6")), desc["client"]["addr"], r["client_addr"], r["front_addr"],
             r["back_addr"]]
            + [a for d in desc["directors"] for a in [d["front_addr"], *d["laddrs"]]
               if a != d.get("laddr6")]
            + [s["addr"] for s in desc["real_servers"]])


def addresses6(desc: dict[str, Any]) -> list[str]:
    """Every IPv6 address the plan hands out (none without `ipv6`)."""
    if not desc.get("vip6"):
        return []
    c, r = desc["client"], desc["router"]
    return ([desc["vip6"], c["addr6"], r["client_addr6"], r["front_addr6"], r["back_addr6"]]
            + [a for d in desc["directors"] for a in (d["front_addr6"], d["laddr6"])]
            + [s["addr6"] for s in desc["real_servers"]])
