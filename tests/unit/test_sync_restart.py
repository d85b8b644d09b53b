"""A backup restarted empty must end up with the master's current table, never with an
older incarnation of a reused client port."""
from __future__ import annotations

from tests.unit.test_sync_epochs import advance
from tests.unit.test_sync_reliability import (
    ACK, FA, FIN, SA, SYN, Sim, client, differences, reply, run)


def finish(eng, cport: int, t: float) -> None:
    """Client FIN, the real server's FIN, the last ACK: TIME_WAIT on the director."""
    fwd = eng.handle(client(FIN, cport), t)
    assert fwd is not None
    assert eng.handle(reply(FA, fwd), t)
    assert eng.handle(client(ACK, cport), t)


def test_a_restarted_backup_holds_the_current_incarnation_of_each_reused_client_port():
    """The lab's restarted backup kept hundreds of stale ESTABLISHED entries: it repaired
    the master's stream from the resend window (old datagrams: the first connection on
    a client port, ESTABLISHED), and the bulk's current entry for that port (a later
    connection on another laddr:lport, now TIME_WAIT, so INACTIVE) was then refused as
    an expiry notice.  The kernel's ip_vs_proc_conn keeps that rule for the stream in
    order; a restarted node that asked for the table takes the bulk, not the history."""
    sim = Sim()
    run(sim)
    a = sim.nodes["a"].engine
    ports = [p for p in range(10000, 13000) if p % 10]          # ESTABLISHED ones
    t = sim.t
    for k in range(0, len(ports), 10):
        t = round(t + 0.001, 6)
        for cport in ports[k:k + 10]:
            finish(a, cport, t)                                 # the first connection ends
            fwd = a.handle(client(SYN, cport), t)               # the port again: a new one
            assert fwd is not None
            assert a.handle(reply(SA, fwd), t)
            assert a.handle(client(ACK, cport), t)
            assert a.handle(client(ACK, cport), t)
            finish(a, cport, t)                                 # ... which ends too
        sim.step(t)
    advance(sim, 1.0)
    b = sim.nodes["b"].engine
    assert differences(a, b) == 0
    resends = sim.nodes["a"].sender.stats["resends"]
    sim.restart("b", 404)
    advance(sim, 3.0)
    # the window's history was not replayed into the new node: the bulk alone filled it
    assert sim.nodes["a"].sender.stats["resends"] == resends
    b = sim.nodes["b"].engine
    assert sim.nodes["b"].receiver.resync_complete
    assert differences(a, b) == 0
