"""The cluster announcer core (ha/announce.py): what a director announces in each state,
in which order the actions come, how a drain ends, and who adopts a dead peer's laddrs."""
from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ha.announce import (AddAddresses, Announce, Announcer, Inputs, RemoveAddresses, adopted,
                         adopter, decide)

VIP1, VIP2 = "198.19.41.100", "198.19.41.101"
POOLS = {"a": ("198.19.42.11",), "b": ("198.19.42.12",), "c": ("198.19.42.13", "198.19.42.23")}
BASE = Inputs(name="a", vips=(VIP1, VIP2), laddrs=POOLS, vips_up=frozenset({VIP1, VIP2}),
              alive=frozenset("abc"))
V1, V2, LA = f"{VIP1}/32", f"{VIP2}/32", "198.19.42.11/32"


@pytest.mark.parametrize("change, prefixes, reason", [
    ({}, {V1, V2, LA}, "healthy"),
    ({"vips_up": frozenset({VIP2})}, {V2, LA}, "healthy, 1 VIP(s) without a real server"),
    ({"vips_up": frozenset()}, {LA}, "healthy, 2 VIP(s) without a real server"),
    ({"stopping": True}, set(), "stopping"),
    ({"stopping": True, "draining": True, "own_conns": 5}, set(), "stopping"),
    ({"node_ok": False}, set(), "node unhealthy"),
    ({"engine_ok": False}, set(), "engine not running"),
    ({"synced": False}, set(), "waiting for the peers' table"),
    ({"draining": True, "own_conns": 3}, {LA}, "draining (3 connections left)"),
    ({"draining": True, "own_conns": 3, "vips_up": frozenset()}, {LA},
     "draining (3 connections left)"),
    ({"draining": True, "own_conns": 0}, set(), "drained"),
])
def test_table_of_states(change, prefixes, reason):
    d = decide(replace(BASE, **change), now=100.0, drain_since=100.0)
    assert d.prefixes == frozenset(prefixes)
    assert d.reason == reason


def test_drain_ends_at_its_timeout_with_connections_left():
    inp = replace(BASE, draining=True, own_conns=7, drain_timeout=30.0)
    assert decide(inp, now=129.9, drain_since=100.0).prefixes == {LA}
    assert decide(inp, now=129.9, drain_since=100.0).deadline == 130.0
    late = decide(inp, now=130.0, drain_since=100.0)
    assert late.prefixes == frozenset() and late.reason == "drain timeout (7 connections left)"


def test_announcer_orders_actions_and_acts_only_on_change():
    # run as the survivor that adopts c's first laddr when c dies
    me = adopter(POOLS["c"][0], frozenset("ab"))
    inp = replace(BASE, name=me)
    own = f"{POOLS[me][0]}/32"
    ann = Announcer()
    assert ann.step(inp, 0.0) == [Announce(frozenset({V1, V2, own}), "healthy")]
    assert ann.step(inp, 1.0) == []
    # c dies: the adopted addresses are added first, then announced
    dead_c = replace(inp, alive=frozenset("ab"))
    mine = adopted(dead_c)
    assert POOLS["c"][0] in mine
    acts = ann.step(dead_c, 2.0)
    assert acts == [AddAddresses(mine),
                    Announce(frozenset({V1, V2, own} | {f"{a}/32" for a in mine}), "healthy")]
    # c comes back: the announcement is withdrawn first, the addresses removed after
    assert ann.step(inp, 3.0) == [Announce(frozenset({V1, V2, own}), "healthy"),
                                  RemoveAddresses(mine)]


def test_dead_peer_laddrs_adopted_by_exactly_one_survivor_and_returned():
    alive = frozenset("ab")
    takers = {n: adopted(replace(BASE, name=n, alive=alive)) for n in "ab"}
    assert takers["a"] | takers["b"] == set(POOLS["c"])
    assert not takers["a"] & takers["b"]
    # a leaving (draining) survivor adopts nothing; the other takes all
    leaving = {n: adopted(replace(BASE, name=n, alive=alive, leaving=frozenset("a")))
               for n in "ab"}
    assert leaving == {"a": frozenset(), "b": frozenset(POOLS["c"])}
    # a draining director never adopts, even unaware that the others know
    assert decide(replace(BASE, alive=alive, draining=True, own_conns=1), 0.0).adopted == set()


def test_announcer_drain_clock_starts_at_the_first_draining_step():
    ann = Announcer()
    ann.step(BASE, 0.0)
    draining = replace(BASE, draining=True, own_conns=2, drain_timeout=10.0)
    assert ann.step(draining, 50.0) == [Announce(frozenset({LA}), "draining (2 connections left)")]
    assert ann.deadline() == 60.0
    assert ann.step(draining, 59.0) == []
    assert ann.step(draining, 60.0) == [Announce(frozenset(), "drain timeout (2 connections left)")]
    # the drain is cancelled: back to everything, and a later drain starts a new clock
    assert ann.step(BASE, 61.0)[0].prefixes == {V1, V2, LA}
    ann.step(draining, 70.0)
    assert ann.deadline() == 80.0


names = st.sets(st.sampled_from([chr(c) for c in range(ord("a"), ord("a") + 12)]), min_size=1)
laddrs = st.lists(st.integers(1, 254).map(lambda i: f"198.19.43.{i}"), min_size=1, max_size=20,
                  unique=True)


@settings(max_examples=200, deadline=None)
@given(cands=names, addrs=laddrs, gone=st.sampled_from("abcdefghijkl"))
def test_adopter_moves_a_laddr_only_when_its_adopter_goes(cands, addrs, gone):
    after = cands - {gone}
    for a in addrs:
        before = adopter(a, frozenset(cands))
        assert before in cands
        if before != gone and after:
            assert adopter(a, frozenset(after)) == before
    # whatever order the set was built in (each director builds its own), same answer
    assert [adopter(a, frozenset(sorted(cands, reverse=True))) for a in addrs] == \
        [adopter(a, frozenset(cands)) for a in addrs]


def test_a_dead_directors_laddrs_spread_over_the_survivors():
    pools = {"a": (), "b": (), "c": (), "d": tuple(f"198.19.43.{i}" for i in range(1, 61))}
    inp = Inputs(name="a", vips=(), laddrs=pools, alive=frozenset("abc"))
    shares = [len(adopted(replace(inp, name=n))) for n in "abc"]
    assert sum(shares) == 60 and min(shares) >= 10


@pytest.mark.parametrize("alive, leaving, isolated", [
    ("abc", "", False),
    ("ab", "", False),          # c dead, b heard: a and b carry on (one adopts c's laddrs)
    ("a", "", True),            # nobody heard: cut off, or everyone else dead
    ("a", "b", False),          # b leaves, c silent: one of two heard, a half
    ("a", "bc", False),         # both said they leave: the last one stays
])
def test_a_director_hearing_a_minority_withdraws_everything(alive, leaving, isolated):
    """A director that hears fewer than half of the members is counted dead by the
    others, and one of them adopts its laddrs: were it still routed, both would
    announce them and the router would split their replies (split brain).  So it
    withdraws, and adopts nothing."""
    inp = replace(BASE, alive=frozenset(alive), leaving=frozenset(leaving))
    d = decide(inp, now=100.0)
    if isolated:
        assert d.prefixes == frozenset() and d.adopted == frozenset()
        assert d.reason == "isolated: a minority of the members heard"
    else:
        assert LA in d.prefixes and d.reason == "healthy"


def test_half_of_the_members_keeps_its_own_and_adopts_nothing():
    pools = {n: (f"198.19.42.{10 + i}",) for i, n in enumerate("abcd")}
    for me in "ab":
        d = decide(Inputs(name=me, vips=(VIP1,), laddrs=pools, vips_up=frozenset({VIP1}),
                          alive=frozenset("ab")), now=0.0)
        assert d.adopted == frozenset() and d.prefixes == {V1, f"{pools[me][0]}/32"}


def test_alone_by_config_is_never_isolated():
    inp = Inputs(name="a", vips=(VIP1,), laddrs={"a": POOLS["a"]}, vips_up=frozenset({VIP1}),
                 alive=frozenset("a"))
    assert decide(inp, now=0.0).prefixes == {V1, LA}


@given(st.integers(2, 6), st.data())
@settings(max_examples=200, deadline=None)
def test_a_laddr_is_announced_from_one_side_of_a_partition_only(n, data):
    """Sync splits the members into two sides, all still routed: each director decides
    from the members it hears.  Every laddr is announced from one side only (never a
    split brain), and a side holding a majority announces every laddr."""
    names = "abcdef"[:n]
    side = data.draw(st.sets(st.sampled_from(names), min_size=1, max_size=n - 1))
    pools = {m: (f"198.19.42.{10 + i}",) for i, m in enumerate(names)}
    rest = set(names) - side
    announced: dict[str, set[str]] = {}
    for m in names:
        hears = side if m in side else rest
        d = decide(Inputs(name=m, vips=(VIP1,), laddrs=pools, vips_up=frozenset({VIP1}),
                          alive=frozenset(hears)), now=0.0)
        for p in d.prefixes - {V1}:
            announced.setdefault(p, set()).add(m)
    for prefix, by in announced.items():
        assert by <= side or by <= rest, (prefix, by, side)
    if 2 * max(len(side), len(rest)) > n:
        assert len(announced) == n


def test_an_adopter_keeps_a_laddr_until_its_returning_owner_says_its_routes_are_up():
    """b died and a adopted its laddr; b comes back (heard again) but says `joining` until
    its BGP session is up: a keeps announcing b's laddr meanwhile (given back before, the
    router would have no route for it), and gives it back once b says it is up.  A
    joining member's laddrs are never newly adopted, and it is never a candidate."""
    pools = {"a": ("198.19.42.11",), "b": ("198.19.42.12",), "c": ("198.19.42.13",)}
    base = replace(BASE, laddrs=pools)
    lb = "198.19.42.12"
    holder = adopter(lb, frozenset("ac"))
    ann = Announcer()
    for_holder = replace(base, name=holder)
    ann.step(replace(for_holder, alive=frozenset("ac")), 0.0)
    assert ann.adopted == {lb}
    back = replace(for_holder, alive=frozenset("abc"), joining=frozenset("b"))
    assert ann.step(back, 1.0) == [] and ann.adopted == {lb}          # kept, nothing changes
    assert f"{lb}/32" in ann.announced
    acts = ann.step(replace(back, joining=frozenset()), 2.0)              # b's routes are up
    assert ann.adopted == set() and acts[-1] == RemoveAddresses(frozenset({lb}))
    # nobody takes a joining member's laddr that it did not hold
    other = "a" if holder == "c" else "c"
    assert adopted(replace(base, name=other, alive=frozenset("abc"), joining=frozenset("b")),
                   frozenset()) == set()
    # a joining member is no candidate: c's laddr, c dead, goes to the one active survivor
    assert adopted(replace(base, name="a", alive=frozenset("ab"), joining=frozenset("b"))) \
        == {"198.19.42.13"}
    assert adopted(replace(base, name="b", alive=frozenset("ab"), joining=frozenset("b"))) \
        == set()


@given(st.integers(2, 6), st.data())
@settings(max_examples=200, deadline=None)
def test_a_joining_director_adopts_nothing_and_every_dead_laddr_has_one_adopter(n, data):
    """Every director hears the same members, some of them joining (their own routes not
    up: each says so of itself, and the others hear it).  A joining director adopts
    nothing and announces no peer's laddr, whatever it held; a dead peer's laddr is
    adopted by one active director at most."""
    names = "abcdef"[:n]
    pools = {m: (f"198.19.42.{10 + i}", f"198.19.43.{10 + i}") for i, m in enumerate(names)}
    alive = data.draw(st.sets(st.sampled_from(names), min_size=1))
    joining = data.draw(st.sets(st.sampled_from(sorted(alive))))
    held = data.draw(st.frozensets(st.sampled_from([a for p in pools.values() for a in p])))
    by: dict[str, set[str]] = {}
    for m in alive:
        inp = Inputs(name=m, vips=(VIP1,), laddrs=pools, vips_up=frozenset({VIP1}),
                     alive=frozenset(alive), joining=frozenset(joining))
        d = decide(inp, now=0.0, held=held if m in joining else frozenset())
        if m in joining:
            assert d.adopted == set() and adopted(inp, held) == set()
            assert d.prefixes <= {V1, *(f"{a}/32" for a in pools[m])}, d
        for a in d.adopted:
            by.setdefault(a, set()).add(m)
    dead = {a for m in set(names) - alive for a in pools[m]}
    assert all(len(ms) == 1 and not ms & joining for ms in by.values()), by
    assert set(by) <= dead


def test_a_starting_director_waits_for_every_live_peers_table():
    """table_arrived: every member's bulk arrived -> at once; past the settle time (every
    live peer heard by then) -> when every peer heard has answered, one at least; the
    start-up wait over -> whatever arrived.  The first bulk alone is not the table."""
    from ha.announce import table_arrived
    peers = frozenset("bc")
    f = lambda heard, answered, waited: table_arrived(peers, frozenset(heard), frozenset(answered),
                                                      waited, settle=0.6, wait=1.0)
    assert f("bc", "bc", 0.01)                      # everyone's table: go
    assert not f("bc", "b", 0.01)                   # the first bulk only: wait
    assert not f("bc", "b", 0.7)                    # c heard, its bulk not whole yet
    assert not f("b", "b", 0.3)                     # c not heard yet, but may be alive
    assert f("b", "b", 0.7)                         # c silent past the settle: b's will do
    assert not f("", "", 0.7)                       # nobody answered: the wait decides
    assert f("bc", "", 1.0) and f("", "", 1.0)      # the start-up wait over
    assert table_arrived(frozenset(), frozenset(), frozenset(), 0.0, 0.6, 1.0) is False
    assert table_arrived(frozenset(), frozenset(), frozenset(), 1.0, 0.6, 1.0)


# -- the router's view (Inputs.routed) --------------------------------------------------

ALL_LADDRS = {f"{a}/32" for pool in POOLS.values() for a in pool}


def test_the_last_director_keeps_serving_and_adopts_every_laddr_with_the_router_view():
    """b and c crashed one after the other: silent on sync, and the router routes them no
    more.  Without a view a hears a minority and goes dark; with it, a announces the VIPs,
    its own laddr and every laddr of b and c."""
    alone = replace(BASE, alive=frozenset("a"))
    assert decide(alone, 0.0).prefixes == frozenset()
    d = decide(replace(alone, routed=frozenset()), 0.0)
    assert d.prefixes == {V1, V2} | ALL_LADDRS and d.reason == "healthy"
    assert d.adopted == set(POOLS["b"] + POOLS["c"])


def test_a_peer_silent_but_still_routed_keeps_its_laddrs_and_stays_a_candidate():
    """c is cut from sync (a and b hear each other, not c) but the router still routes
    it: nobody adopts c's laddrs; c itself, hearing nobody, keeps its own.  When the
    router stops routing c, one of a and b adopts each; when it routes c again, the
    adopter gives it back."""
    for me in "ab":
        d = decide(replace(BASE, name=me, alive=frozenset("ab"), routed=frozenset("abc")), 0.0)
        assert d.adopted == frozenset() and d.prefixes == {V1, V2, f"{POOLS[me][0]}/32"}
    c = decide(replace(BASE, name="c", alive=frozenset("c"), routed=frozenset("ab")), 0.0)
    assert c.prefixes == {V1, V2} | {f"{a}/32" for a in POOLS["c"]} and c.adopted == set()
    gone = {n: adopted(replace(BASE, name=n, alive=frozenset("ab"), routed=frozenset("ab")))
            for n in "ab"}
    assert gone["a"] | gone["b"] == set(POOLS["c"]) and not gone["a"] & gone["b"]
    holder = next(n for n in "ab" if gone[n])
    ann = Announcer()
    ann.step(replace(BASE, name=holder, alive=frozenset("ab"), routed=frozenset("ab")), 0.0)
    acts = ann.step(replace(BASE, name=holder, alive=frozenset("ab"), routed=frozenset("abc")), 1.0)
    assert ann.adopted == set() and acts[-1] == RemoveAddresses(gone[holder])


def test_half_of_four_adopts_the_dead_half_with_the_router_view():
    pools = {n: (f"198.19.42.{10 + i}",) for i, n in enumerate("abcd")}
    base = Inputs(name="a", vips=(VIP1,), laddrs=pools, vips_up=frozenset({VIP1}),
                  alive=frozenset("ab"))
    assert adopted(base) == set()                               # quorum: a half adopts nothing
    takers = [adopted(replace(base, name=n, routed=frozenset("ab"))) for n in "ab"]
    assert takers[0] | takers[1] == {pools["c"][0], pools["d"][0]}
    assert not takers[0] & takers[1]


@given(st.integers(2, 6), st.data())
@settings(max_examples=300, deadline=None)
def test_with_the_router_view_every_laddr_has_exactly_one_announcer(n, data):
    """Some members crashed (silent, and the router routes them no more), the live ones are
    split by a sync partition (each hears its side only) but all still routed.  Each live
    director decides from the members it hears and the router's view: every laddr, of the
    dead and of the live, is announced by exactly one director, whatever the partition
    (no split brain, no dark laddr), and a live member's laddrs by itself."""
    names = "abcdef"[:n]
    dead = data.draw(st.sets(st.sampled_from(names), max_size=n - 1))
    live = set(names) - dead
    side = data.draw(st.sets(st.sampled_from(sorted(live))))
    pools = {m: (f"198.19.42.{10 + i}", f"198.19.43.{10 + i}") for i, m in enumerate(names)}
    by: dict[str, set[str]] = {}
    for m in live:
        hears = side if m in side else live - side
        d = decide(Inputs(name=m, vips=(VIP1,), laddrs=pools, vips_up=frozenset({VIP1}),
                          alive=frozenset(hears), routed=frozenset(live)), now=0.0)
        assert V1 in d.prefixes
        for p in d.prefixes - {V1}:
            by.setdefault(p, set()).add(m)
    assert set(by) == {f"{a}/32" for pool in pools.values() for a in pool}
    assert all(len(ms) == 1 for ms in by.values()), by
    assert all(by[f"{a}/32"] == {m} for m in live for a in pools[m])


def test_a_peer_that_said_it_leaves_is_adopted_at_once_though_still_routed():
    """c stops (or says `fault`): it withdraws its routes itself, so a and b take its laddrs
    while the router still routes them via c, not a moment after: both hold c's flows."""
    takers = {n: adopted(replace(BASE, name=n, alive=frozenset("ab"), leaving=frozenset("c"),
                                 routed=frozenset("abc"))) for n in "ab"}
    assert takers["a"] | takers["b"] == set(POOLS["c"]) and not takers["a"] & takers["b"]
