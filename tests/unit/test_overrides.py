"""Operator overrides: the versioned map, the state file, and the wire entries."""
from __future__ import annotations

import json

import pytest

from director.overrides import BadOverride, Override, Overrides, loads
from proto import sync as S
from tandem.state_file import StateFile, load, write_atomically

K = ("tcp/198.18.0.100:80", "198.18.2.22", 8080)
T0 = 1_800_000_000.0


def test_a_change_made_after_seeing_another_wins_on_both_nodes_whatever_the_clocks():
    a, b = Overrides("a"), Overrides("b")
    first = a.set(K, 5, T0)
    b.merge(a.entries())
    # b's clock is an hour behind: its later change must still win (it saw a's)
    second = b.set(K, 0, T0 - 3600, drain=True)
    assert second.gen > first.gen
    a.merge(b.entries())
    assert a.get(K) == b.get(K) == second
    # and a's old entry heard again (a replay, a stale file) changes nothing
    assert a.merge([first]) == [] and b.merge([first]) == []
    assert a.get(K).drain and a.get(K).weight == 0


def test_a_clear_is_kept_so_an_old_override_does_not_come_back():
    a, b = Overrides("a"), Overrides("b")
    old = a.set(K, 0, T0, drain=True)
    b.merge(a.entries())
    tomb, was = b.clear(K, T0 + 1)
    assert was and tomb.cleared and b.get(K) is None
    assert b.merge([old]) == []             # a restarted a brings its file's old drain: refused
    assert a.merge(b.entries()) == [(old, tomb)] and a.get(K) is None
    assert b.clear(K, T0 + 2)[1] is False   # nothing in force any more


def test_concurrent_changes_settle_the_same_way_on_both_nodes():
    a, b = Overrides("a"), Overrides("b")
    x, y = a.set(K, 3, T0), b.set(K, 4, T0)    # same millisecond, never seen each other
    a.merge([y])
    b.merge([x])
    assert a.get(K) == b.get(K) == max(x, y, key=lambda o: o.version)


def test_the_state_file_round_trips_and_is_written_atomically(tmp_path):
    a = Overrides("a")
    a.set(K, 0, T0, drain=True)
    a.clear(("udp/198.18.0.100:80", "2001:2::5", 53), T0 + 1)
    path = tmp_path / "state" / "overrides.json"
    write_atomically(path, a.dumps())
    assert [p.name for p in path.parent.iterdir()] == ["overrides.json"]   # no temp left
    back = Overrides("a", load(path))
    assert back.entries() == a.entries() and back.gen == a.gen
    assert back.set(K, 1, T0 - 10).gen > a.gen      # a restart never reuses a generation


@pytest.mark.parametrize("doc, why", [
    (b"{", "not JSON"),
    (b'{"version": 2, "overrides": []}', "version 1"),
    (b'{"version": 1, "overrides": [["s", "198.18.2.22", 8080, 1, "a", 1.0, 70000, false]]}',
     "weight"),
    (b'{"version": 1, "overrides": [["s", "198.018.2.22", 8080, 1, "a", 1.0, 1, false]]}', "addr"),
    (b'{"version": 1, "overrides": [["s", "198.18.2.22", 8080, 1, "a", 1.0, 3, true]]}', "drain"),
])
def test_a_bad_state_file_says_what_is_wrong_and_is_set_aside(tmp_path, caplog, doc, why):
    with pytest.raises(BadOverride, match=why):
        loads(doc)
    path = tmp_path / "overrides.json"
    path.write_bytes(doc)
    assert load(path) == []
    assert not path.exists() and (tmp_path / "overrides.json.bad").read_bytes() == doc
    assert str(path) in caplog.text


def test_no_state_dir_no_file(tmp_path):
    assert load(None) == []
    StateFile(None).save_soon(b"x")      # nothing to do, no loop needed


async def test_saves_run_in_the_background_and_the_latest_wins(tmp_path):
    sf = StateFile(tmp_path / "overrides.json")
    a = Overrides("a")
    for w in range(5):
        a.set(K, w, T0 + w)
        sf.save_soon(a.dumps())
    await sf.drain()
    assert json.loads(sf.path.read_bytes())["overrides"][0][6] == 4
    assert 1 <= sf.writes <= 5


def test_override_entries_cross_the_wire_signed_and_checked():
    a = Overrides("a")
    o = a.set(K, 7, T0)
    raw = S.encode(S.Message(S.OVERRIDES, 7, "a", 1, 3, T0, overrides=[o.to_list()]), b"k" * 32)
    msg = S.decode(raw, b"k" * 32, 7)
    assert [Override.from_list(v) for v in msg.overrides] == [o]
    with pytest.raises(S.SyncError, match="bad_mac"):
        S.decode(raw[:-1] + bytes([raw[-1] ^ 1]), b"k" * 32, 7)
    bad = o.to_list()
    bad[7] = "yes"
    with pytest.raises(S.SyncError, match="malformed"):
        S.decode(S.encode(S.Message(S.OVERRIDES, 7, "a", 1, 3, T0, overrides=[bad]), b"k" * 32),
                 b"k" * 32, 7)


def test_many_overrides_split_into_datagrams_that_fit():
    items = [Override(f"tcp/198.18.0.100:{p}", "198.18.2.22", 8080, 10 ** 12 + p, "a", T0, 1,
                      False).to_list() for p in range(1, 200)]
    bodies = S.pack_overrides(items, "a")
    assert sum(len(b) for b in bodies) == len(items) and len(bodies) > 1
    for body in bodies:
        raw = S.encode(S.Message(S.OVERRIDES, 0, "a", S.U64, S.U64, T0, overrides=body), b"k" * 32)
        assert len(raw) <= S.MAX_PAYLOAD
