"""Cluster mode over IPv6 (`tandem lab up --cluster 3 --ipv6`, lab/bgp6.py, lab/cluster6.py):
each director's BIRD announces the IPv6 VIP and its own IPv6 laddr /128 over an IPv6 BGP
session, the router's BIRD installs the VIP as one multipath route and each laddr via its
owner; the three nodes serve the IPv6 VIP in engine mode through their IPv6 laddrs.  One
bring-up for the module (prefix ``tc6``, engine-mode services only), deleted by name
whatever happens.

Judged: content, never timing.  The routes the router holds, every held IPv6 connection's
echoes all back in order across a director's death (the hold client's `ok`), every new IPv6
connection answered, and the dead director's IPv6 laddr routed via the one survivor that
adopted it; a director joined later serves the IPv6 VIP too."""
from __future__ import annotations

import re
import subprocess
import tempfile
import time

import pytest

from lab import bgp, cluster, cluster_join, cluster_plan
from lab.testing import run_in
from tests.lab.cluster_lab import cluster_lab, end_hold, start_hold, wait_synced

pytestmark = pytest.mark.lab

PREFIX = "tc6"
HELD = 45


@pytest.fixture(scope="module")
def lab():
    yield from cluster_lab(PREFIX, kernel=False, ipv6=True)


def me(lab, name: str) -> dict:
    return next(d for d in lab["directors"] if d["name"] == name)


def view(name: str) -> dict:
    return cluster.status(PREFIX, name)["cluster"]


def test_the_router_has_the_ipv6_vip_via_every_director_and_each_laddr6_via_its_owner(lab):
    vip6 = f"{lab['vip6']}/128"
    routes = lab["router"]["routes"]        # as `tandem lab up --cluster 3 --ipv6 --json` lists
    assert routes[vip6] == [me(lab, n)["front_addr6"] for n in "abc"]
    assert routes[f"{lab['vip']}/32"] == [me(lab, n)["front_addr"] for n in "abc"]
    said = bgp.birdc(PREFIX, "router", "show", "protocols")
    for n in "abc":
        d = me(lab, n)
        assert routes[f"{d['laddr6']}/128"] == [d["front_addr6"]]
        assert bgp.nexthops(PREFIX, d["laddr6"]) == [d["front_addr6"]]
        assert f"{d['laddr6']}/128" in view(n)["announced"] and vip6 in view(n)["bird_has"]
        row = next(ln.split() for ln in said.splitlines() if ln.startswith(f"dir6_{n} "))
        assert row[1] == "BGP" and row[3] == "up" and "Established" in row, said
    # BFD guards the IPv6 sessions as it does the IPv4 ones (one `protocol bfd` for both)
    want = {me(lab, n)[k] for n in "abc" for k in ("front_addr", "front_addr6")}
    end = time.monotonic() + 10
    while (up := {m.group(1) for m in re.finditer(
            r"^(\S+)\s+br0\s+Up\b", bgp.birdc(PREFIX, "router", "show", "bfd", "sessions"),
            re.M)}) != want:
        assert time.monotonic() < end, (up, want)
        time.sleep(0.1)
    sysctl = subprocess.run(["ip", "netns", "exec", f"{PREFIX}-router", "sysctl", "-n",
                             "net.ipv6.fib_multipath_hash_policy"], capture_output=True, text=True)
    assert sysctl.stdout.strip() == "1"


def test_kill_one_director_every_held_ipv6_connection_survives(lab):
    """IPv6 connections spread over the three directors (each owns some), held and echoing;
    b dies (link down, node and BIRD SIGKILLed).  The router drops b's IPv6 next hop, one
    survivor announces b's IPv6 laddr (the router routes it there), b's flows go on from
    their synced entries: every held connection keeps every echo in order, and new IPv6
    connections all succeed through a and c.  Restored, b is a next hop again and its
    laddr6 routed to it."""
    b6 = me(lab, "b")["laddr6"]
    with tempfile.TemporaryDirectory() as tmp:
        held, stop = start_hold(PREFIX, lab["vip6"], tmp, HELD)
        try:
            owned = wait_synced(PREFIX, HELD)
            assert all(owned[n] > 0 for n in "abc"), owned

            cluster.fault(PREFIX, "b", "kill")
            bgp.wait_nexthops(PREFIX, lab["vip6"], [me(lab, n)["front_addr6"] for n in "ac"],
                              wait=20)
            end = time.monotonic() + 10
            while len(adopters := [n for n in "ac" if b6 in view(n)["adopted"]]) != 1:
                assert time.monotonic() < end, {n: view(n) for n in "ac"}
                time.sleep(0.05)
            adopter = adopters[0]
            bgp.wait_nexthops(PREFIX, b6, [me(lab, adopter)["front_addr6"]], wait=20)
            print(f"\n[cluster6] b killed: owned before {owned}; b's laddr6 adopted by {adopter}")
            new = run_in(f"{PREFIX}-client", "tcp-whoami", "--host", lab["vip6"], "--port", 80,
                         "--count", 45, "--concurrency", 5)
            assert new["ok"] == 45, new
            # none depends on b: every laddr6 they came from is routed via a survivor (b's
            # own only for a reused client port whose synced entry a survivor holds)
            alive6 = [[me(lab, n)["front_addr6"]] for n in "ac"]
            for x in {a for p in new["peers"].values() for a in p}:
                assert bgp.nexthops(PREFIX, x) in alive6, (x, new)
            time.sleep(1.0)         # echoes after the new connections too
        finally:
            out = end_hold(held, stop)
    assert out["ok"] == HELD and out["echoes"] == out["sent"], out

    cluster.fault(PREFIX, "b", "restore")
    bgp.wait_nexthops(PREFIX, lab["vip6"], [me(lab, n)["front_addr6"] for n in "abc"], wait=30)
    bgp.wait_nexthops(PREFIX, b6, [me(lab, "b")["front_addr6"]], wait=30)
    assert view(adopter)["adopted"] == []


def test_a_director_joining_the_ipv6_lab_serves_the_ipv6_vip(lab):
    """`tandem lab join d` on the IPv6 lab: d gets its IPv6 address and session, the router
    routes the VIP6 via d too and d's laddr6 via d; new IPv6 connections reach the real
    servers through d's laddr6 among the others."""
    out = cluster_join.join(PREFIX, "d")
    d = cluster_plan.director(PREFIX, "d", kernel=False, ipv6=True)
    assert out["routes"][f"{lab['vip6']}/128"] == [me(lab, n)["front_addr6"] for n in "abc"] + [
        d["front_addr6"]]
    assert out["routes"][f"{d['laddr6']}/128"] == [d["front_addr6"]]
    new = run_in(f"{PREFIX}-client", "tcp-whoami", "--host", lab["vip6"], "--port", 80,
                 "--count", 60, "--concurrency", 5)
    assert new["ok"] == 60, new
    assert d["laddr6"] in {a for p in new["peers"].values() for a in p}, new
