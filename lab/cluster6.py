"""IPv6 in the cluster lab (`tandem lab up --cluster N --ipv6`), the part beyond the router's
segment (lab/bgp6.py wires that one, before BIRD starts): the client's and the real servers'
IPv6 addresses and default routes, the router's on its client and back links, the directors'
IPv6 default routes, and an echo server on each real server's IPv6 address (recorded in the
lab's state, so `tandem lab down` stops it by PID).  Addresses from the plan
(lab/cluster_plan.py, `ipv6`)."""
from __future__ import annotations

from typing import Any

from . import bgp6, procs

RS_PORT = 8080


def build(desc: dict[str, Any]) -> None:
    """IPv6 on the client and back links: addresses, forwarding, default routes."""
    router, client = desc["router"], desc["client"]
    bgp6.enable(router["ns"], ["client", "back"], forwarding=True)
    bgp6.add_address(router["ns"], "client", router["client_addr6"])
    bgp6.add_address(router["ns"], "back", router["back_addr6"])
    bgp6.enable(client["ns"], ["eth0"])
    bgp6.add_address(client["ns"], "eth0", client["addr6"])
    bgp6.default_route(client["ns"], router["client_addr6"])
    for r in desc["real_servers"]:
        bgp6.enable(r["ns"], ["eth0"])
        bgp6.add_address(r["ns"], "eth0", r["addr6"])
        bgp6.default_route(r["ns"], router["back_addr6"])
    for d in desc["directors"]:
        default_route(d)


def default_route(d: dict[str, Any]) -> None:
    """Director `d`'s IPv6 default route (a link fault takes it; restore puts it back)."""
    bgp6.default_route(d["ns"], bgp6.ROUTER_ADDR6)


def start_echo(prefix: str, state: dict[str, Any], desc: dict[str, Any], wait: float) -> None:
    """An echo server on each real server's [addr6]:8080, waited on until it answers."""
    procs.start_echoes(prefix, state, [procs.Echo(r["name"], r["ns"], r["addr6"],
                                                  f"echo6-{r['name']}", f"{r['name']}-6.log")
                                       for r in desc["real_servers"]], RS_PORT, wait,
                       what="IPv6 echo server")