"""The lab's IPv6 plan: every IPv6 address, from 2001:2::/48 only, mirroring the IPv4 one;
nothing here touches the system (lab.ipv6 builds it).

::

    client 2001:2:0:1::10 -- router 2001:2:0:1::1 / 2001:2::1
    front 2001:2::/64      a 2001:2::11   b 2001:2::12     VIP6 2001:2::100/128
    back  2001:2:0:2::/64  a 2001:2:0:2::11   b ::12       laddrs 2001:2:0:2::100, ::101 /128
                           rs1..3 2001:2:0:2::21..23, echo (tcp + udp) on [addr]:8080,
                           its PROXY-aware echo (tcp + udp) on [addr]:8081

VIP6 serves what VIP serves (SERVICES6): port 80 over TCP and UDP, and the PROXY services,
81/tcp with a v2 header and 82/tcp with v1, plus 81/udp with v2 on every datagram; the
dual-stack lab serves that one on the IPv4 VIP too (lab.plan.PROXY_UDP_SERVICE).

``describe6(info)`` adds the IPv6 keys to the lab's description (``tandem lab up --json``)
beside the IPv4 ones, which stay as they are: ``services6`` lists VIP6's services with their
``client_address`` mode, as ``services`` lists VIP's (which gains 81/udp).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .plan import DIRECTORS, LADDRS, PROXY_UDP_SERVICE, REAL_SERVERS, RS_PORT, SERVICES

LAB_NET6 = ipaddress.ip_network("2001:2::/48")
CLIENT_NET6 = "2001:2:0:1::/64"
FRONT_NET6 = "2001:2::/64"
BACK_NET6 = "2001:2:0:2::/64"
CLIENT6 = "2001:2:0:1::10"
ROUTER_CLIENT6 = "2001:2:0:1::1"
ROUTER_FRONT6 = "2001:2::1"
VIP6 = "2001:2::100"
#: the IPv6 laddrs, one per IPv4 one (the same last number)
LADDRS6 = [f"2001:2:0:2::{a.rsplit('.', 1)[1]}" for a in LADDRS]
LADDR6 = LADDRS6[0]
#: director name -> (front, back) addresses
DIRECTOR6 = {d["name"]: (f"2001:2::{d['front_addr'].rsplit('.', 1)[1]}",
                         f"2001:2:0:2::{d['back_addr'].rsplit('.', 1)[1]}") for d in DIRECTORS}
REAL_SERVER6 = {r["name"]: f"2001:2:0:2::{r['addr'].rsplit('.', 1)[1]}" for r in REAL_SERVERS}

for _a in [CLIENT6, ROUTER_CLIENT6, ROUTER_FRONT6, VIP6, *LADDRS6, *REAL_SERVER6.values(),
           *(a for pair in DIRECTOR6.values() for a in pair)]:
    assert ipaddress.ip_address(_a) in LAB_NET6, _a


#: VIP6's services, as lab.plan.SERVICES writes VIP's (plain ones first)
SERVICES6 = (*SERVICES, PROXY_UDP_SERVICE)


def services6(scheduler: str = "rr", real_servers: list[dict[str, Any]] | None = None,
              laddrs: list[str] | None = None) -> list[dict[str, Any]]:
    """The node's IPv6 services (SERVICES6): VIP6:80 over TCP and UDP to every real server's
    [addr]:8080, and the PROXY services to their [addr]:8081, through the IPv6 laddrs
    (`real_servers` rows as the IPv4 ones are written; each service puts its own port)."""
    reals = real_servers or [{"addr": a, "port": RS_PORT, "weight": 1} for a in REAL_SERVER6.values()]
    return [{"proto": svc["proto"], "vip": VIP6, "port": svc["port"], "scheduler": scheduler,
             "laddrs": list(laddrs or LADDRS6),
             **({"client_address": svc["client_address"]} if svc["client_address"] != "none" else {}),
             "real_servers": [{**r, "port": svc["rs_port"]} for r in reals]}
            for svc in SERVICES6]


def describe6(info: dict[str, Any]) -> dict[str, Any]:
    """The lab description `info` with the IPv6 addresses beside the IPv4 ones."""
    info["ipv6"] = True
    info["vip6"] = VIP6
    info["services"].append(dict(PROXY_UDP_SERVICE))
    info["services6"] = [dict(svc) for svc in SERVICES6]
    info["laddrs6"] = list(LADDRS6)
    info["client"]["addr6"] = CLIENT6
    info["client"]["gateway6"] = ROUTER_CLIENT6
    info["router"]["client_addr6"], info["router"]["front_addr6"] = ROUTER_CLIENT6, ROUTER_FRONT6
    for d in info["directors"]:
        d["front_addr6"], d["back_addr6"] = DIRECTOR6[d["name"]]
    for r in info["real_servers"]:
        r["addr6"] = REAL_SERVER6[r["name"]]
    info["nets6"] = {"client": CLIENT_NET6, "front": FRONT_NET6, "back": BACK_NET6}
    return info
