"""Property tests for the schedulers (hypothesis).

The expensive properties (table builds of 65537 slots, 20,000 flows) run a
fixed, derandomized set of examples so the suite stays fast and repeatable.
"""
from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from director.dest import Dest
from director.sched import Flow, create

ALL = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq",
       "fo", "ovf", "mh", "twos", "maglev")
#: schedulers that refuse a connection only when no dest is usable
WORK_CONSERVING = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sed", "nq", "fo", "twos")

SLOW = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def random_flows(seed: int, k: int, v6: bool = False) -> list[Flow]:
    r = random.Random(seed)
    out = []
    for _ in range(k):
        src = r.getrandbits(128).to_bytes(16, "big") if v6 else r.getrandbits(32).to_bytes(4, "big")
        out.append(Flow(6, src, r.randint(1024, 65535), b"\x0a\x00\x00\x64", 80, 0.0))
    return out


# dest specs: (third octet, fourth octet, port, weight) -> separately built Dests
dest_spec = st.tuples(st.integers(0, 255), st.integers(1, 254),
                      st.sampled_from([80, 443, 8080, 8443]), st.integers(0, 20))


def build(specs, overloaded=()) -> list[Dest]:
    ds = [Dest(bytes([172, 16, a, b]), port, w) for a, b, port, w in specs]
    for i in overloaded:
        if i < len(ds):
            ds[i].overloaded = True
    return ds


def key(d):
    return None if d is None else (d.addr, d.port)


# --------------------------------------------------------------------------
# contract: never raise, never pick quiesced or OVERLOAD dests


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(ALL),
       specs=st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.integers(0, 3),
                                st.integers(0, 600)), max_size=6),
       seed=st.integers(0, 2 ** 16))
def test_choice_is_usable_member_or_none(name, specs, seed):
    ds = []
    for i, (w, ovl, act, inact) in enumerate(specs):
        d = Dest(f"172.16.0.{i + 1}", 80, w)
        d.overloaded, d.active, d.inactive = ovl, act, inact
        ds.append(d)
    kw = {"table_size": 251} if name in ("mh", "maglev") else {}
    s = create(name, rng=random.Random(seed), **kw)
    s.update(ds)
    usable_exists = any(d.weight > 0 and not d.overloaded for d in ds)
    for f in random_flows(seed, 20):
        d = s.schedule(f)
        if d is None:
            assert not (name in WORK_CONSERVING and usable_exists)
        else:
            assert any(d is x for x in ds)
            assert d.weight > 0 and not d.overloaded


# --------------------------------------------------------------------------
# shares


def _check_shares(weights, counts, total, tol=0.02):
    wsum = sum(w for w in weights if w > 0)
    for w, c in zip(weights, counts):
        if w <= 0:
            assert c == 0
        else:
            want = total * w / wsum
            assert abs(c - want) <= tol * want, (weights, counts)


@settings(max_examples=30, deadline=None)
@given(weights=st.lists(st.integers(0, 50), min_size=1, max_size=8)
       .filter(lambda ws: any(w > 0 for w in ws)),
       extra=st.integers(0, 1000))
def test_wrr_shares_match_weights(weights, extra):
    ds = [Dest(f"172.16.0.{i + 1}", 80, w) for i, w in enumerate(weights)]
    s = create("wrr")
    s.update(ds)
    total = 100 * sum(weights) + extra
    counts = {id(d): 0 for d in ds}
    f = Flow(6, b"\xc0\x00\x02\x01", 1, b"\x0a\x00\x00\x64", 80)
    for _ in range(total):
        counts[id(s.schedule(f))] += 1
    _check_shares(weights, [counts[id(d)] for d in ds], total)


@settings(max_examples=20, deadline=None)
@given(weights=st.lists(st.integers(0, 50), min_size=1, max_size=8)
       .filter(lambda ws: any(w > 0 for w in ws)))
def test_wlc_held_open_connections_match_weights(weights):
    ds = [Dest(f"172.16.0.{i + 1}", 80, w) for i, w in enumerate(weights)]
    s = create("wlc")
    s.update(ds)
    total = 100 * sum(weights)
    f = Flow(6, b"\xc0\x00\x02\x01", 1, b"\x0a\x00\x00\x64", 80)
    for _ in range(total):
        s.schedule(f).active += 1          # held open, never closed
    _check_shares(weights, [d.active for d in ds], total)


# --------------------------------------------------------------------------
# hashing schedulers: same config -> same choice on another director


@settings(max_examples=40, deadline=None)
@given(specs=st.lists(dest_spec, min_size=1, max_size=10),
       flags=st.sets(st.sampled_from(["sh-fallback", "sh-port"])),
       overloaded=st.sets(st.integers(0, 9), max_size=3),
       seed=st.integers(0, 2 ** 16), v6=st.booleans())
def test_sh_same_choice_on_independent_instances(specs, flags, overloaded, seed, v6):
    a, b = create("sh", flags), create("sh", flags)
    a.update(build(specs, overloaded))
    b.update(build(specs, overloaded))
    for f in random_flows(seed, 300, v6):
        assert key(a.schedule(f)) == key(b.schedule(f))


@settings(max_examples=25, deadline=None)
@given(specs=st.lists(dest_spec, min_size=1, max_size=10),
       flags=st.sets(st.sampled_from(["mh-fallback", "mh-port"])),
       overloaded=st.sets(st.integers(0, 9), max_size=3),
       size=st.sampled_from([251, 4093]),
       seed=st.integers(0, 2 ** 16), v6=st.booleans())
def test_mh_same_choice_on_independent_instances(specs, flags, overloaded, size, seed, v6):
    a, b = create("mh", flags, table_size=size), create("mh", flags, table_size=size)
    a.update(build(specs, overloaded))
    b.update(build(specs, overloaded))
    assert [key(d) for d in a.table] == [key(d) for d in b.table]
    for f in random_flows(seed, 300, v6):
        assert key(a.schedule(f)) == key(b.schedule(f))


@SLOW
@given(specs=st.lists(dest_spec, min_size=1, max_size=12),
       overloaded=st.sets(st.integers(0, 11), max_size=3),
       fallback=st.booleans(), seed=st.integers(0, 2 ** 16), v6=st.booleans())
def test_maglev_same_choice_on_independent_instances(specs, overloaded, fallback, seed, v6):
    flags = {"maglev-fallback"} if fallback else set()
    a, b = create("maglev", flags), create("maglev", flags)
    a.update(build(specs, overloaded))
    b.update(build(specs, overloaded))
    assert [key(d) for d in a.table] == [key(d) for d in b.table]
    for f in random_flows(seed, 300, v6):
        assert key(a.schedule(f)) == key(b.schedule(f))


# --------------------------------------------------------------------------
# minimal disruption: removing one of N dests moves ~ its own flows only

N_FLOWS = 20_000


def _moved_fraction(name, n, victim, seed, **kw):
    r = random.Random(seed)
    specs = set()
    while len(specs) < n:
        specs.add((r.randrange(256), r.randrange(1, 255), r.choice([80, 443, 8080])))
    specs = sorted(specs)
    before = [Dest(bytes([172, 16, a, b]), p, 1) for a, b, p in specs]
    after = [Dest(bytes([172, 16, a, b]), p, 1) for i, (a, b, p) in enumerate(specs) if i != victim]
    s1, s2 = create(name, **kw), create(name, **kw)
    s1.update(before)
    s2.update(after)
    moved = own = 0
    for f in random_flows(seed + 1, N_FLOWS):
        d1 = s1.schedule(f)
        if d1 is before[victim]:
            own += 1
        if key(d1) != key(s2.schedule(f)):
            moved += 1
    return moved / N_FLOWS, own / N_FLOWS


@SLOW
@given(n=st.integers(3, 10), victim=st.integers(0, 9), seed=st.integers(0, 2 ** 16))
def test_maglev_removal_moves_at_most_1_over_n_plus_2pct(n, victim, seed):
    moved, own = _moved_fraction("maglev", n, victim % n, seed)
    assert moved <= 1 / n + 0.02, (moved, own)
    assert moved >= own            # every flow of the removed dest moves


@SLOW
@given(n=st.integers(3, 10), victim=st.integers(0, 9), seed=st.integers(0, 2 ** 16))
def test_mh_large_table_removal_moves_at_most_1_over_n_plus_2pct(n, victim, seed):
    # table_size 65521 = CONFIG_IP_VS_MH_TAB_INDEX 16
    moved, own = _moved_fraction("mh", n, victim % n, seed, table_size=65521)
    assert moved <= 1 / n + 0.02, (moved, own)
    assert moved >= own


def test_mh_default_table_removal_disruption_is_small_but_not_bounded():
    """With the kernel's default 4093 slots and N <= 10, Maglev's extra
    disruption has a heavy tail: in about 1 % of configurations removing one
    dest also moves more than 2 % of the *other* dests' flows (up to ~14 %
    seen; the same happens with any good hash, so it is the table size, not
    the hash).  Measured exactly over the table slots for 300 fixed configs:
    the typical extra is well under 1 %, and 95 % stay within the 2 % margin."""
    r = random.Random(2024)
    extras = []
    for _ in range(300):
        n = r.randint(3, 10)
        specs = sorted({(r.randrange(256), r.randrange(1, 255), r.choice([80, 443, 8080]))
                        for _ in range(n)})
        n = len(specs)
        victim = r.randrange(n)
        before = [Dest(bytes([172, 16, a, b]), p, 1) for a, b, p in specs]
        s1, s2 = create("mh"), create("mh")
        s1.update(before)
        s2.update([d for i, d in enumerate(before) if i != victim])
        changed = sum(1 for x, y in zip(s1.table, s2.table) if x is not y)
        own = sum(1 for x in s1.table if x is before[victim])
        extras.append((changed - own) / len(s1.table))
    extras.sort()
    assert sum(extras) / len(extras) < 0.01
    assert extras[int(0.95 * len(extras))] <= 0.02
