"""Epochs without clocks: restarts with stepped clocks, replays of earlier runs,
old windows and old bulks, control messages of epochs nobody vouched for.

The pair runs over the in-memory network of test_sync_reliability (injected
time); each node's wall clock is injected too, stepped by +/-120 s.
"""
from __future__ import annotations

import pytest

from proto import sync as S
from proto.sync import Message
from syncd.config import SyncConfig
from syncd.receiver import SyncReceiver
from syncd.sender import SyncSender
from tests.unit.test_sync_reliability import (
    CFG, KEY, N, Node, Recorder, Sim, answer, data, decode, differences, entry, open_conns, run, trust)


def restart(sim: Sim, name: str, seed: int, skew: float) -> Node:
    """Node `name` comes back empty, its wall clock `skew` seconds off."""
    node = sim.nodes[name] = Node(name, sim.cfg, sim.t, seed)
    node.sender.wall = node.receiver.wall = lambda: sim.t + skew
    sim.send(name, node.receiver.start(sim.t))
    return node


def capture(sim: Sim, src: str) -> list[bytes]:
    """Record every datagram `src` puts on the wire from now on (an eavesdropper)."""
    seen: list[bytes] = []
    send = sim.send

    def tap(s, datagrams):
        datagrams = list(datagrams)
        if s == src:
            seen.extend(datagrams)
        send(s, datagrams)
    sim.send = tap
    return seen


def advance(sim: Sim, seconds: float, each=None) -> None:
    t = sim.t
    for i in range(int(round(seconds / 0.001))):
        t = round(t + 0.001, 6)
        if each is not None:
            each(i, t)
        sim.step(t)


def replay(sim: Sim, dst: str, datagrams: list[bytes]) -> None:
    """Inject captured datagrams into `dst` now; its answers go on the wire."""
    node = sim.nodes[dst]
    for d in datagrams:
        sim.send(dst, node.receiver.on_datagram(d, sim.t))


def same(a: Node, b: Node) -> bool:
    return differences(a.engine, b.engine) == 0


# == item 3: a restart with the clock stepped ==========================================

@pytest.mark.parametrize("skew", [-120.0, 120.0])
def test_a_sender_restarted_with_its_clock_stepped_is_followed_and_its_old_run_is_refused(skew):
    """The peer's restart is recognised by a nonce it answers, not by its send
    times (as conntrackd, whose restarted peer announces itself with HELLO and is
    answered with HELLO_BACK, never compares the pair's clocks): with the
    restarted node's clock 120 s behind or ahead, its new connections still reach
    the peer, it gets the peer's table by bulk resync, and datagrams captured from
    its previous run, replayed afterwards, change nothing."""
    sim = Sim(loss=0.05, seed=3)
    old_a = capture(sim, "a")
    run(sim)
    old_a = list(old_a)                         # what a's previous run sent
    assert len(old_a) > 100
    a = restart(sim, "a", 404, skew)
    b = sim.nodes["b"]

    def more(i, t):
        if 300 <= i < 400:
            open_conns(a, 30000 + (i - 300) * 5, 5, t, closing=False)
    advance(sim, 1.0, more)
    assert a.receiver.resync_complete and len(a.engine.table) == N + 500
    assert same(a, b)
    assert b.receiver.stats["epoch_changes"] == 1
    # the previous run of a, replayed to b: challenged, never applied
    applied, table = b.receiver.stats["entries_applied"], len(b.engine.table)
    replay(sim, "b", old_a)
    advance(sim, 0.5)
    assert b.receiver.stats["entries_applied"] == applied and len(b.engine.table) == table
    stream = [d for d in old_a if decode(d).type not in (S.CHALLENGE, S.RESPONSE)]
    assert b.receiver.stats["unauthenticated"] >= len(stream) and b.receiver.stats["epochs_refused"] == 1
    assert same(a, b)


@pytest.mark.parametrize("skew", [-120.0, 120.0])
def test_a_receiver_restarted_with_its_clock_stepped_gets_its_bulk_and_old_requests_do_nothing(skew):
    """A restarted backup's resync requests are answered whatever its clock says,
    and its initial resync completes; its requests from before the restart,
    replayed, start no bulk."""
    sim = Sim()
    old_b = capture(sim, "b")
    run(sim)
    for _ in range(2):                          # b asks for the table again, twice
        sim.send("b", sim.nodes["b"].receiver.start(sim.t))
        advance(sim, 0.3)
    old_b = list(old_b)
    a = sim.nodes["a"]
    runs = a.sender.stats["bulk_runs"]
    b = restart(sim, "b", 303, skew)
    advance(sim, 0.5)
    assert b.receiver.resync_complete and same(a, b)
    assert a.sender.stats["bulk_runs"] == runs + 1
    requests = [d for d in old_b if decode(d).type == S.RESYNC_REQUEST]
    assert requests
    for _ in range(6):
        replay(sim, "a", requests)
        advance(sim, 0.3)
    assert a.sender.stats["bulk_runs"] == runs + 1


# == item 4: max_age and whose bulk completes the resync ===============================

def test_max_age_has_a_safe_default_and_a_window_kept_from_long_ago_is_not_applied():
    """IPVS's backup applies only what the master sends now; here a restarted
    receiver NACKs the sender's window, which may hold messages sent an hour ago:
    those are not applied (max_age, 30 s by default, measured on the sender's own
    clock), and the receiver asks for a bulk resync instead."""
    assert SyncConfig().max_age == 30.0
    rec = Recorder()
    r = SyncReceiver(CFG, "b", KEY, rec)
    out = trust(r, last=3, t=5000.0)                       # the live epoch, at its time 5000
    assert [m.ranges for m in out if m.type == S.NACK] == [[(1, 3)]]
    r.on_datagram(data(1, [entry(1)], t=1400.0), 10.0)      # resends of an hour ago
    r.on_datagram(data(2, [entry(2)], t=1401.0), 10.0)
    out = r.on_datagram(data(3, [entry(3)], t=4990.0), 10.0)   # ten seconds ago: fine
    assert [e.cport for e in rec.applied] == [entry(3).cport]
    assert r.stats["too_old"] == 2 and r.stats["gave_up"] == 1 and r.missing() == 0


def test_only_a_bulk_begun_after_this_nodes_request_completes_its_initial_resync():
    """A replayed (or merely older) bulk does not make the initial resync "complete",
    nor is it applied (a node that asked for the table takes no history from before
    the answer to its challenge): only a bulk whose first message comes after the
    sender's last seq as of that answer does (conntrackd's -n request is likewise
    answered by a fresh dump of the cache)."""
    rec = Recorder()
    r = SyncReceiver(CFG, "b", KEY, rec)
    r.start(0.0)
    trust(r, last=12, t=0.1)                               # the live sender is at seq 12
    r.on_datagram(data(10, [entry(10)], flags=S.F_BULK | S.F_BULK_START, t=0.01), 0.1)   # an old
    r.on_datagram(data(11, [entry(11)], flags=S.F_BULK, t=0.02), 0.1)                    # bulk,
    r.on_datagram(data(12, [entry(12)], flags=S.F_BULK | S.F_BULK_END, t=0.03), 0.1)     # replayed
    assert r.stats["replayed"] == 3 and rec.applied == [] and not r.resync_complete
    r.on_datagram(data(13, [entry(13)], flags=S.F_BULK | S.F_BULK_START, t=0.2), 0.2)
    assert not r.resync_complete
    r.on_datagram(data(15, [entry(15)], flags=S.F_BULK | S.F_BULK_END, t=0.2), 0.2)
    assert not r.resync_complete                           # 14 is missing
    r.on_datagram(data(14, [entry(14)], flags=S.F_BULK, t=0.2), 0.25)
    assert r.resync_complete and r.stats["bulks_answered"] == 1


def test_a_bulk_replayed_from_a_dead_epoch_completes_nothing_and_applies_nothing():
    rec = Recorder()
    r = SyncReceiver(CFG, "b", KEY, rec)
    r.start(0.0)
    out = r.on_datagram(data(1, [entry(1)], epoch=7, flags=S.F_BULK | S.F_BULK_START), 0.1)
    r.on_datagram(data(2, [entry(2)], epoch=7, flags=S.F_BULK | S.F_BULK_END), 0.1)
    answer(r, out, last=40, epoch=8, t=0.2)               # the live node is at epoch 8
    assert rec.applied == [] and not r.resync_complete and r.stats["unauthenticated"] == 2
    assert r.peers["a"].epoch == 8 and r.stats["epochs_refused"] == 1


# == item 6: control messages ===========================================================

def test_control_messages_of_an_epoch_not_authenticated_are_ignored():
    """A NACK or RESYNC_REQUEST is acted upon only from a node's authenticated
    epoch and with a control counter above any seen (or the one in its answer):
    otherwise it is counted and challenged, and no datagram is resent.  (IPVS
    sync has no control messages at all, so a replay can make its master do
    nothing; here, too, a replayed request costs at most a challenge.)"""
    s = SyncSender(CFG, "a", epoch=1, key=KEY, snapshot=lambda: [entry(i) for i in range(5)])
    r = SyncReceiver(CFG, "a", KEY, Recorder())
    r.attach(s)
    for i in range(3):
        s.queue(entry(i), 0.0)
        s._close_pending(0.0)
    s.poll(0.0)
    nack = lambda seq, epoch=9: S.encode(Message(S.NACK, 5, "b", epoch, seq, 1.0, target="a",
                                                 target_epoch=1, ranges=[(1, 3)]), KEY)
    out = [decode(d) for d in r.on_datagram(nack(1), 1.0)]
    assert [m.type for m in out] == [S.CHALLENGE] and s.stats["resends"] == 0
    assert r.on_datagram(S.encode(Message(S.RESYNC_REQUEST, 5, "b", 9, 2, 1.0), KEY), 1.0) == []
    assert s.stats["bulk_runs"] == 0
    answer(r, [S.encode(out[0], KEY)], epoch=9, node="b", t=1.0)   # b's answer: control seq 1000
    assert r.on_datagram(nack(999), 1.1) == [] and r.stats["replayed"] == 1    # older than its answer
    assert len(r.on_datagram(nack(1001), 1.1)) == 3 and s.stats["resends"] == 3
    assert r.on_datagram(nack(1001), 1.2) == []                              # the same one again
    assert r.on_datagram(nack(1002, epoch=8), 1.2) != [] and s.stats["resends"] == 3   # another epoch


def test_replayed_resync_requests_after_a_sender_restart_start_no_bulk():
    """Six RESYNC_REQUESTs captured from the live peer and replayed to a sender
    that has just restarted (so it has no memory of their counters) start no
    bulk: the peer's answer to the challenge carries its current counter, and
    says it wants nothing."""
    sim = Sim()
    old_b = capture(sim, "b")
    advance(sim, 0.3)
    b = sim.nodes["b"]
    for _ in range(6):                        # six genuine requests, each answered
        sim.send("b", b.receiver.start(sim.t))
        advance(sim, 0.3)
    requests = [d for d in old_b if decode(d).type == S.RESYNC_REQUEST]
    assert len(requests) == 6 and b.receiver.stats["bulks_answered"] == 1 + 6
    a = restart(sim, "a", 404, 0.0)
    advance(sim, 0.3)
    runs = a.sender.stats["bulk_runs"]
    for d in requests:
        replay(sim, "a", [d])
        advance(sim, 0.3)
    assert a.sender.stats["bulk_runs"] == runs


def test_a_refused_epoch_is_warned_about_once(caplog):
    """A replayed run of a dead process is refused with one warning in the log,
    however long the replay goes on (each message is only counted)."""
    r = SyncReceiver(CFG, "b", KEY, Recorder())
    trust(r, epoch=10)
    caplog.set_level("WARNING", logger="tandem.syncd")
    for i in range(1, 200):                     # 4 s of replays of epoch 9, nobody answers
        r.on_datagram(data(i, [entry(i)], epoch=9, t=i * 0.02), i * 0.02)
    warnings = [rec for rec in caplog.records if rec.levelname == "WARNING"]
    assert len(warnings) == 1 and "0000000000000009" in warnings[0].getMessage()
    assert r.stats["unauthenticated"] == 1 + 199 and r.stats["epochs_refused"] == 1
    assert r.stats["challenges_sent"] <= 4 / CFG.nack_interval + 1
