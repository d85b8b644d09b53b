"""IPv6 takeover moves the neighbours: the unsolicited neighbour advertisement (issue 15).

Director a holds VIP6 (front) and LADDR6 (back); the router has resolved VIP6 and real server
rs1 has resolved LADDR6, both to a's MACs.  Director b takes the addresses over through the
node's privileged interface (tandem.kernel.LinuxKernel, in b's namespace): add_addresses adds
them with nodad, then announce sends one unsolicited NA per address (override flag set).  As
for IPv4's gratuitous ARP, the NA must move the router's and the real server's entries to b's
MACs at once: Linux applies an NA with the override flag to an existing entry whatever its state
(RFC 4861 §7.2.5), and the entries still name a's MACs until it arrives.
"""
from __future__ import annotations

import json
import socket
import subprocess
import time

import pytest

from lab import ipv6
from lab.nsutil import in_netns
from lab.plan import BACK_IF, FRONT_IF, ns_name
from lab.testing import lab_session, require_lab
from tandem.kernel import LinuxKernel

pytestmark = pytest.mark.lab
PREFIX = "tna6"


def ip_json(ns: str, *args: str) -> list:
    cp = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True,
                        timeout=10, check=True)
    return json.loads(cp.stdout or "[]")


def mac(ns: str, ifname: str) -> str:
    return ip_json(ns, "link", "show", "dev", ifname)[0]["address"]


def neigh(ns: str, addr: str) -> str | None:
    """The link-layer address ns has for addr, or None."""
    for e in ip_json(ns, "-6", "neigh", "show", addr):
        if e.get("lladdr"):
            return e["lladdr"]
    return None


def resolve(ns: str, addr: str) -> str:
    """Make ns resolve addr (one UDP datagram to it) and return the MAC it learnt (bounded)."""
    def send() -> None:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.sendto(b"resolve", (addr, 9))
    in_netns(ns, send)
    end = time.monotonic() + 5.0
    while (got := neigh(ns, addr)) is None and time.monotonic() < end:
        time.sleep(0.05)
    assert got, f"{ns} did not resolve {addr}"
    return got


def wait_for(ns: str, addr: str, want: str, limit: float = 5.0) -> str | None:
    end = time.monotonic() + limit
    while (got := neigh(ns, addr)) != want and time.monotonic() < end:
        time.sleep(0.05)
    return got


@pytest.fixture(scope="module")
def lab():
    require_lab()
    with lab_session(PREFIX, node=False, ha=False) as info:
        ipv6.enable(PREFIX)
        yield info


def test_takeover_of_ipv6_addresses_moves_the_router_and_real_server_neighbour_entries(lab):
    a, b = ns_name(PREFIX, "a"), ns_name(PREFIX, "b")
    router, rs1 = ns_name(PREFIX, "router"), ns_name(PREFIX, "rs1")
    moves = [(router, FRONT_IF, ipv6.VIP6), (rs1, BACK_IF, ipv6.LADDR6)]
    for ns, ifname, addr in moves:
        assert resolve(ns, addr) == mac(a, ifname)
    k = LinuxKernel()
    for _, ifname, addr in moves:
        in_netns(a, k.del_addresses, ifname, [addr])          # a is gone
        in_netns(b, k.add_addresses, ifname, [addr])
        flags = [x for x in ip_json(b, "-6", "addr", "show", "dev", ifname)[0]["addr_info"]
                 if x["local"] == addr][0]
        assert flags.get("nodad") and not flags.get("tentative"), flags
        # deprecated (preferred_lft 0): never the source the host picks for its own traffic
        assert flags.get("preferred_life_time") == 0 and flags.get("deprecated"), flags
    for ns, ifname, addr in moves:
        assert neigh(ns, addr) == mac(a, ifname)               # nothing moved it yet
    for _, ifname, addr in moves:
        assert in_netns(b, k.announce, ifname, [addr]) == 1
    for ns, ifname, addr in moves:
        assert wait_for(ns, addr, mac(b, ifname)) == mac(b, ifname), (ns, addr)
