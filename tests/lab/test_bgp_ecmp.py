"""BGP and ECMP with a real daemon (BIRD 2): a router namespace learns the VIP from three
director namespaces and installs one multipath route, a next hop per director
(lab/bgp.py).  Withdrawals go through the same include file and `birdc configure` a
node's BIRD adapter uses (ha/bird.py).  Namespaces of our own (prefix ``tbgp``), deleted
by name whatever happens.  How fast the router notices a crash is measured by
``python -m lab.bgp_measure`` (docs/cluster.md), not asserted here."""
from __future__ import annotations

import re
import shutil

import pytest

from lab import bgp
from lab import state as st
from lab.testing import require_lab

pytestmark = pytest.mark.lab

PREFIX = "tbgp"


def _up(prefix: str, timers: bgp.Timers):
    require_lab()
    if shutil.which("bird") is None:
        pytest.fail("bird2 is not installed: run make setup")
    bgp.down(prefix)
    try:
        info = bgp.up(prefix, 3, timers=timers)
        bgp.wait_nexthops(prefix, bgp.VIP, [d["addr"] for d in info["directors"]], wait=30)
        yield info
    finally:
        result = bgp.down(prefix)
        assert not result["errors"], result


@pytest.fixture(scope="module")
def lab3():
    yield from _up(PREFIX, bgp.Timers())


@pytest.fixture
def lab3_no_bfd():
    yield from _up(PREFIX + "h", bgp.Timers(bfd=False))


def last_error(prefix: str, protocol: str) -> str:
    out = bgp.birdc(prefix, "router", "show", "protocols", "all", protocol)
    m = re.search(r"Last error:\s*(.+)", out)
    return m.group(1).strip() if m else ""


def hops_of(info, *names):
    return [d["addr"] for d in info["directors"] if d["name"] in names]


def test_vip_is_one_route_with_a_next_hop_per_director(lab3):
    assert bgp.nexthops(PREFIX, bgp.VIP) == hops_of(lab3, "a", "b", "c")
    for d in lab3["directors"]:            # each laddr /32 only via its own director
        assert bgp.nexthops(PREFIX, d["laddr"]) == [d["addr"]]


def test_bfd_runs_between_namespaces(lab3):
    out = bgp.birdc(PREFIX, "router", "show", "bfd", "sessions")
    up = {m.group(1) for m in re.finditer(r"^(\S+)\s+br0\s+Up\b", out, re.M)}
    assert up == set(hops_of(lab3, "a", "b", "c")), out


def test_withdrawal_on_one_director_leaves_two_and_announcing_again_three(lab3):
    b = hops_of(lab3, "b")[0]
    bgp.announce(PREFIX, "b", [])
    bgp.wait_nexthops(PREFIX, bgp.VIP, hops_of(lab3, "a", "c"))
    assert bgp.nexthops(PREFIX, "198.19.42.12") == []
    assert bgp.nexthops(PREFIX, "198.19.42.11") == hops_of(lab3, "a")
    # a drain: the VIP withdrawn, the laddr still announced (its flows' replies return)
    bgp.announce(PREFIX, "b", ["198.19.42.12"])
    bgp.wait_nexthops(PREFIX, "198.19.42.12", [b])
    assert bgp.nexthops(PREFIX, bgp.VIP) == hops_of(lab3, "a", "c")
    bgp.announce(PREFIX, "b", [bgp.VIP, "198.19.42.12"])
    bgp.wait_nexthops(PREFIX, bgp.VIP, hops_of(lab3, "a", "b", "c"))


def test_crashed_director_is_withdrawn_by_bfd_and_comes_back(lab3):
    """Link lost, then SIGKILL: no TCP reset reaches the router, so only its timers can
    tell; with BFD on, it is BFD that takes the session (and the next hop) down."""
    state = st.load_state(PREFIX)
    bgp.crash_director(PREFIX, state, "c")
    bgp.wait_nexthops(PREFIX, bgp.VIP, hops_of(lab3, "a", "b"))
    assert bgp.nexthops(PREFIX, "198.19.42.13") == []
    assert last_error(PREFIX, "dir_c") == "Error: BFD session down"
    bgp.restore_director(PREFIX, state, "c", [bgp.VIP, "198.19.42.13"])
    bgp.wait_nexthops(PREFIX, bgp.VIP, hops_of(lab3, "a", "b", "c"), wait=30)


def test_without_bfd_the_hold_timer_withdraws_a_crashed_director(lab3_no_bfd):
    prefix = PREFIX + "h"
    state = st.load_state(prefix)
    bgp.crash_director(prefix, state, "a")
    bgp.wait_nexthops(prefix, bgp.VIP, hops_of(lab3_no_bfd, "b", "c"))
    assert last_error(prefix, "dir_a") == "BGP Error: Hold timer expired"


def test_announcer_core_drives_bird_through_a_drain(lab3):
    """The announcer's decisions (ha/announce.py) carried out by the BIRD adapter on
    director b: healthy, then draining with connections left (VIP withdrawn, laddr kept),
    then drained (everything withdrawn), then healthy again."""
    from dataclasses import replace

    from ha.announce import Announce, Announcer, Inputs
    pools = {d["name"]: (d["laddr"],) for d in lab3["directors"]}
    inp = Inputs(name="b", vips=(bgp.VIP,), laddrs=pools, vips_up=frozenset({bgp.VIP}),
                 alive=frozenset(pools))
    ann = Announcer(announced=frozenset({f"{bgp.VIP}/32", "198.19.42.12/32"}))

    def run(i, now):
        for act in ann.step(i, now):
            assert isinstance(act, Announce)
            bgp.announce(PREFIX, "b", sorted(act.prefixes))

    run(replace(inp, draining=True, own_conns=4), 10.0)
    bgp.wait_nexthops(PREFIX, bgp.VIP, hops_of(lab3, "a", "c"))
    assert bgp.nexthops(PREFIX, "198.19.42.12") == hops_of(lab3, "b")
    run(replace(inp, draining=True, own_conns=0), 11.0)
    bgp.wait_nexthops(PREFIX, "198.19.42.12", [])
    run(inp, 12.0)
    bgp.wait_nexthops(PREFIX, bgp.VIP, hops_of(lab3, "a", "b", "c"))
    bgp.wait_nexthops(PREFIX, "198.19.42.12", hops_of(lab3, "b"))


@pytest.fixture(scope="module")
def traffic(lab3):
    from lab import bgp_traffic
    bgp_traffic.add_client(PREFIX)
    bgp_traffic.serve_vip(PREFIX, [d["name"] for d in lab3["directors"]])
    return bgp_traffic


def test_connections_spread_over_every_announcing_director(lab3, traffic):
    """300 connections from the client to the VIP: the router's multipath route sends
    some to each of the three directors; with b's announcement withdrawn, none to b."""
    out = traffic.whoami(PREFIX, 300, 10)
    assert out["ok"] == 300 and set(out["by_server"]) == {"a", "b", "c"}, out
    bgp.announce(PREFIX, "b", ["198.19.42.12"])
    try:
        bgp.wait_nexthops(PREFIX, bgp.VIP, hops_of(lab3, "a", "c"))
        out = traffic.whoami(PREFIX, 300, 10)
        assert out["ok"] == 300 and set(out["by_server"]) == {"a", "c"}, out
    finally:
        bgp.announce(PREFIX, "b", [bgp.VIP, "198.19.42.12"])
    bgp.wait_nexthops(PREFIX, bgp.VIP, hops_of(lab3, "a", "b", "c"))


def test_a_withdrawal_moves_flows_of_surviving_directors_too(lab3, traffic):
    """The problem cluster mode's synced state is for: the kernel's multipath hash splits
    the hash space into equal ranges in next-hop order, so when the last of three goes,
    flows whose director is still there move as well (each remaining range grows into
    the next), and when it comes back they move again (back
    to the same director: the choice is a function of the flow and the next-hop set)."""
    fl = traffic.flows(2000)
    three = traffic.router_choice(PREFIX, fl)
    assert set(three.values()) == set(hops_of(lab3, "a", "b", "c"))
    bgp.announce(PREFIX, "c", ["198.19.42.13"])
    try:
        bgp.wait_nexthops(PREFIX, bgp.VIP, hops_of(lab3, "a", "b"))
        two = traffic.router_choice(PREFIX, fl)
        assert set(two.values()) == set(hops_of(lab3, "a", "b"))
        assert traffic.moved(three, two)["moved_needlessly"] > 0
    finally:
        bgp.announce(PREFIX, "c", [bgp.VIP, "198.19.42.13"])
    bgp.wait_nexthops(PREFIX, bgp.VIP, hops_of(lab3, "a", "b", "c"))
    assert traffic.router_choice(PREFIX, fl) == three
