"""syncd.kernel_source: sync entries from conntrack events of kernel-forwarded flows, by the
engine path's SyncPolicy (IPVS's rules plus tandem's on_syn/on_established), in the sync
wire format."""
from __future__ import annotations

import socket

import pytest

from director.kernel_rules import MARK_BASE, MARK_PREFIX_MASK
from director.protocol import make_protocols
from proto import consts as C, ctnetlink as ct, sync as S
from schema import keys as K
from syncd.kernel_source import END_TIMEOUT, MIN_REFRESH, KernelSyncSource
from syncd.policy import SyncPolicy

MARK = MARK_BASE | 3
CLIENT, VIP = bytes([198, 18, 1, 10]), bytes([198, 18, 0, 100])
RS, LADDR = bytes([198, 18, 2, 21]), bytes([198, 18, 2, 100])
PROTOS = make_protocols(K.TIMEOUTS.defaults())
INJECTOR_PID = 4242
ESTABLISHED_STATUS = ct.IPS_CONFIRMED | ct.IPS_SEEN_REPLY | ct.IPS_ASSURED | 0x1b0


def timeout_of(proto: int, state: int) -> float:
    return PROTOS[proto].timeouts[state]


def source(active: bool = True, pair: bool = True, **policy) -> KernelSyncSource:
    return KernelSyncSource(SyncPolicy(**policy), timeout_of,
                            lambda m: m & MARK_PREFIX_MASK == MARK_BASE, own_pid=INJECTOR_PID,
                            active=active, pair=pair)


def event(kind: str, cport: int = 40000, state: int | None = ct.TCP_CT_SYN_SENT, *,
          proto: int = 6, mark: int | None = MARK, status: int = ct.IPS_CONFIRMED | 0x1b0,
          lport: int = 61000, pid: int = 0, laddr: bytes = LADDR) -> ct.Message:
    """An event as the kernel sends it (encoded and decoded by the codec): the reply tuple
    already translated, real server -> laddr:lport."""
    mtype, flags = {"new": (ct.MSG_NEW, ct.NLM_F_CREATE), "update": (ct.MSG_NEW, 0),
                    "destroy": (ct.MSG_DELETE, 0)}[kind]
    orig = ct.Tuple(proto, CLIENT, VIP, cport, 80)
    reply = ct.Tuple(proto, RS, laddr, 8080, lport)
    tcp = ct.TcpInfo(state) if proto == 6 and state is not None else None
    msg = ct.Message(mtype, flags, 0, socket.AF_INET,
                     ct.Conntrack(orig=orig, reply=reply, status=status, timeout=100, mark=mark,
                                  tcp=tcp), pid)
    [decoded] = ct.decode(ct.encode(msg))
    return decoded


def test_tcp_lifecycle_follows_the_policy():
    """SYN at once and urgent (on_syn), ESTABLISHED at once and urgent, FIN_WAIT and
    TIME_WAIT at once, the end as timeout 0; the SYN-ACK (still IPVS's SYN_RECV) sends
    nothing.  Each entry carries the binding from the translated reply tuple."""
    src = source()
    [(e, urgent)] = src.apply(event("new"), 10.0)
    assert urgent and e.state == C.SYN_RECV
    assert (e.proto, e.caddr, e.cport, e.vaddr, e.vport) == (6, CLIENT, 40000, VIP, 80)
    assert (e.daddr, e.dport, e.laddr, e.lport) == (RS, 8080, LADDR, 61000)
    assert e.timeout == 60.0 and e.flags == C.INACTIVE | C.NOOUTPUT and not e.template
    assert src.apply(event("update", state=ct.TCP_CT_SYN_RECV), 10.01) == []
    [(e, urgent)] = src.apply(event("update", state=ct.TCP_CT_ESTABLISHED,
                                    status=ESTABLISHED_STATUS), 10.02)
    assert urgent and e.state == C.ESTABLISHED and e.timeout == 900.0
    assert e.flags == C.ASSURED                                    # active, reply seen
    [(e, urgent)] = src.apply(event("update", state=ct.TCP_CT_FIN_WAIT,
                                    status=ESTABLISHED_STATUS), 20.0)
    assert not urgent and e.state == C.FIN_WAIT and e.flags == C.INACTIVE | C.ASSURED
    assert src.apply(event("update", state=ct.TCP_CT_CLOSE_WAIT, status=ESTABLISHED_STATUS),
                     20.1)[0][0].state == C.CLOSE_WAIT
    assert src.apply(event("update", state=ct.TCP_CT_TIME_WAIT, status=ESTABLISHED_STATUS),
                     20.2)[0][0].state == C.TIME_WAIT
    [(e, urgent)] = src.apply(event("destroy", state=None), 150.0)
    assert not urgent and e.timeout == END_TIMEOUT and e.state == C.CLOSE
    assert e.flags & C.INACTIVE and src.flows == {}
    assert src.stats["ends"] == 1 and src.stats["urgent"] == 2


def test_entries_travel_in_the_sync_wire_format():
    """What the source makes is what the engine path sends: packed into DATA messages,
    signed, decoded by the receiver's decoder to equal entries (the end's timeout 0 too)."""
    src = source()
    made = [e for kind, st in (("new", ct.TCP_CT_SYN_SENT), ("update", ct.TCP_CT_ESTABLISHED),
                               ("destroy", None))
            for e, _ in src.apply(event(kind, state=st, status=ESTABLISHED_STATUS), 1.0)]
    key = b"k" * 32
    [raw] = S.pack_entries({"sync_id": 0, "node_id": "a", "epoch": 1, "send_time": 1.0,
                            "seq": 1}, made, key)
    assert S.decode(raw, key, 0).entries == made


def test_without_on_syn_a_new_flow_waits_for_established():
    src = source(on_syn=False)
    assert src.apply(event("new"), 1.0) == []
    [(e, _)] = src.apply(event("update", state=ct.TCP_CT_ESTABLISHED), 1.1)
    assert e.state == C.ESTABLISHED
    # a flow never sent ends without a word
    src.apply(event("new", cport=2), 1.2)
    assert src.apply(event("destroy", cport=2, state=None), 2.0) == []


def test_established_flow_is_refreshed_before_the_peer_would_expire_it():
    """No packet of an established flow reaches tandem: the source offers it to the policy
    again after max(timeout / 2, 10 s) (900 s ESTABLISHED: every 450 s), or
    min(refresh_period, that) when refresh_period is set, and sends it with its full
    timeout."""
    src = source()
    src.apply(event("new"), 0.0)
    src.apply(event("update", state=ct.TCP_CT_ESTABLISHED, status=ESTABLISHED_STATUS), 1.0)
    assert src.next_deadline() == 451.0
    assert src.poll(450.9) == []
    [(e, urgent)] = src.poll(451.0)
    assert e.state == C.ESTABLISHED and e.timeout == 900.0 and not urgent
    assert src.next_deadline() == 901.0 and src.stats["refreshes"] == 1
    src = source(refresh_period=60.0)
    src.apply(event("new"), 0.0)
    src.apply(event("update", state=ct.TCP_CT_ESTABLISHED, status=ESTABLISHED_STATUS), 1.0)
    assert [e.state for e, _ in src.poll(61.0)] == [C.ESTABLISHED]
    assert [e.state for e, _ in src.poll(121.0)] == [C.ESTABLISHED]
    # a short state is refreshed no faster than MIN_REFRESH; an ended flow never again
    src.apply(event("update", state=ct.TCP_CT_CLOSE, status=ESTABLISHED_STATUS), 122.0)
    assert src.next_deadline() == 122.0 + MIN_REFRESH
    src.apply(event("destroy", state=None), 125.0)
    assert src.poll(1000.0) == []


def test_a_flow_still_opening_is_not_refreshed():
    src = source()
    src.apply(event("new"), 0.0)
    assert src.next_deadline() == float("inf") and src.poll(500.0) == []


def test_refreshes_per_poll_are_bounded():
    src = source(refresh_period=30.0)
    for port in range(1, 11):
        src.apply(event("new", port), 0.0)
        src.apply(event("update", port, ct.TCP_CT_ESTABLISHED, status=ESTABLISHED_STATUS), 0.0)
    assert len(src.poll(30.0, limit=4)) == 4
    assert len(src.poll(30.0, limit=100)) == 6


def test_udp_goes_when_assured():
    """A UDP flow is sent when the kernel marks it ASSURED (reply seen, then more from the
    client), as IPVS sends on the third inbound packet; it is always INACTIVE."""
    src = source()
    assert src.apply(event("new", proto=17, status=ct.IPS_CONFIRMED), 0.0) == []
    assert src.apply(event("update", proto=17, status=ct.IPS_CONFIRMED | ct.IPS_SEEN_REPLY),
                     0.1) == []
    [(e, urgent)] = src.apply(event("update", proto=17, status=ESTABLISHED_STATUS), 0.2)
    assert not urgent and (e.proto, e.state, e.timeout) == (17, 0, 300.0)
    assert e.flags == C.INACTIVE | C.ASSURED
    assert src.apply(event("update", proto=17, status=ESTABLISHED_STATUS), 0.3) == []
    assert [x.timeout for x, _ in src.poll(150.2)] == [300.0]
    [(e, _)] = src.apply(event("destroy", proto=17, state=None), 200.0)
    assert e.timeout == END_TIMEOUT


def test_other_marks_and_protocols_are_ignored():
    src = source()
    assert src.apply(event("new", mark=None), 0.0) == []
    assert src.apply(event("new", cport=2, mark=0x12340001), 0.0) == []
    assert src.apply(event("new", cport=3, proto=1, state=None), 0.0) == []
    assert src.flows == {} and src.stats["ignored"] == 3


def test_own_injections_update_the_view_but_are_never_echoed():
    """Events caused by this node's injecting socket (its port id) are the peer's flows: no
    entry, not even when active; its deletes send no end either."""
    src = source()
    assert src.apply(event("new", state=ct.TCP_CT_ESTABLISHED, pid=INJECTOR_PID), 0.0) == []
    assert src.apply(event("update", state=ct.TCP_CT_FIN_WAIT, pid=INJECTOR_PID), 1.0) == []
    assert len(src.flows) == 1 and src.stats["own"] == 2
    assert src.apply(event("destroy", state=None, pid=INJECTOR_PID), 2.0) == []
    assert src.flows == {}


def test_a_backup_keeps_the_view_and_sends_after_taking_over():
    """Inactive (backup): nothing is sent, not even a GC's end of an injected flow.  Once
    active, every flow it holds (its injected ones included) is refreshed within its
    interval, spread out, and a later end or state change is sent."""
    src = source(active=False)
    for port in range(1, 5):
        assert src.apply(event("new", port, ct.TCP_CT_ESTABLISHED, pid=INJECTOR_PID,
                               status=ESTABLISHED_STATUS), 0.0) == []
    assert src.apply(event("new", 9, ct.TCP_CT_ESTABLISHED), 0.0) == []
    assert src.apply(event("destroy", 9, None), 1.0) == [] and len(src.flows) == 4
    src.set_active(True, 100.0)
    dues = sorted(f.due for f in src.flows.values())
    assert 100.0 < dues[0] and dues[-1] < 550.0 and len(set(dues)) == 4
    assert len(src.poll(550.0)) == 4
    [(e, _)] = src.apply(event("update", 1, ct.TCP_CT_FIN_WAIT, status=ESTABLISHED_STATUS), 600.0)
    assert e.state == C.FIN_WAIT
    [(e, _)] = src.apply(event("destroy", 2, None), 601.0)
    assert e.timeout == END_TIMEOUT and e.cport == 2
    src.set_active(False, 700.0)
    assert src.next_deadline() == float("inf")
    assert src.apply(event("destroy", 3, None), 701.0) == []


def test_a_restarted_node_that_takes_over_refreshes_only_what_the_peer_confirmed():
    """A node restarted after a crash finds its old flows in its kernel table, as it last
    saw them.  The peer, master meanwhile, may have seen some end; its bulk brings the rest
    with their current state.  Taking over, the node refreshes the flows the bulk confirmed
    (with the peer's state), never its own stale copies of the others, which would come
    back to life on the peer ESTABLISHED for 900 s.  A bulk entry that comes only after it
    took over is confirmed and refreshed then; a real change of a stale flow is sent."""
    src = source(active=False)
    for port in (1, 2, 3):                  # the table it left, read at its start
        assert src.apply(event("new", port, ct.TCP_CT_ESTABLISHED,
                               status=ESTABLISHED_STATUS), 0.0) == []
    # the peer's bulk: flow 1 closed meanwhile, flow 4 opened meanwhile
    src.apply(event("update", 1, ct.TCP_CT_TIME_WAIT, pid=INJECTOR_PID,
                    status=ESTABLISHED_STATUS), 1.0)
    src.apply(event("new", 4, ct.TCP_CT_ESTABLISHED, pid=INJECTOR_PID,
                    status=ESTABLISHED_STATUS), 1.0)
    src.set_active(True, 2.0)
    refreshed = {e.cport: e.state for e, _ in src.poll(2000.0)}
    assert refreshed == {1: C.TIME_WAIT, 4: C.ESTABLISHED}
    # flow 2's entry comes late (its datagram was lost, repaired after the takeover)
    assert src.apply(event("update", 2, ct.TCP_CT_TIME_WAIT, pid=INJECTOR_PID,
                           status=ESTABLISHED_STATUS), 2001.0) == []
    assert {e.cport: e.state for e, _ in src.poll(4000.0)} == {1: C.TIME_WAIT, 2: C.TIME_WAIT,
                                                                4: C.ESTABLISHED}
    # flow 3 is alive after all: its next change goes out at once
    [(e, _)] = src.apply(event("update", 3, ct.TCP_CT_FIN_WAIT, status=ESTABLISHED_STATUS), 4001.0)
    assert (e.cport, e.state) == (3, C.FIN_WAIT)
    assert 3 in {e.cport for e, _ in src.poll(6000.0)}


def test_a_flow_sent_in_a_bulk_is_refreshed_from_then_on():
    """An active node's flow that no peer had (a peer came back after it) goes to the peer
    in its bulk; from then on the node refreshes it, as it does every flow the peer holds."""
    src = source(active=False)
    src.apply(event("new", 1, ct.TCP_CT_ESTABLISHED, status=ESTABLISHED_STATUS), 0.0)
    src.set_active(True, 1.0)
    assert src.poll(2000.0) == []               # no peer holds it: nothing to refresh
    [t] = src.snapshot()
    assert src.to_entry(t, 2001.0).state == C.ESTABLISHED
    assert [e.cport for e, _ in src.poll(4000.0)] == [1]


def test_a_cluster_director_refreshes_the_flows_of_the_laddrs_it_adopted():
    """In a cluster every director is active and refreshes the flows it sent; its peers'
    flows, injected here, are refreshed by their owner.  When the owner dies and this
    director adopts its laddr, nobody else would: it takes their refreshes over (spread
    out), and stops once it gives the laddr back."""
    peer = bytes([198, 18, 2, 101])
    src = source(pair=False)
    [(own, _)] = src.apply(event("new", 1, ct.TCP_CT_ESTABLISHED, status=ESTABLISHED_STATUS), 0.0)
    assert own.laddr == LADDR
    for port in (2, 3, 4):
        assert src.apply(event("new", port, ct.TCP_CT_ESTABLISHED, pid=INJECTOR_PID,
                               status=ESTABLISHED_STATUS, laddr=peer), 0.0) == []
    assert [e.cport for e, _ in src.poll(1000.0)] == [1]          # its own flow only
    assert src.take_over(frozenset({peer}), 1000.0) == 3
    assert src.take_over(frozenset({peer}), 1001.0) == 0          # already scheduled
    dues = sorted(f.due for f in src.flows.values() if f.due is not None)
    assert len(set(dues)) == 4 and dues[-1] <= 1450.0
    refreshed = [(e.cport, e.laddr) for e, _ in src.poll(1450.0)]
    assert sorted(refreshed) == [(1, LADDR), (2, peer), (3, peer), (4, peer)]
    src.release(frozenset({peer}))
    assert [e.cport for e, _ in src.poll(5000.0)] == [1]


def test_resync_sends_what_the_lost_events_would_have():
    src = source()
    src.apply(event("new", 1), 0.0)
    src.apply(event("new", 2), 0.0)
    # lost: 1 became ESTABLISHED, 2 ended, 3 began
    table = [event("update", 1, ct.TCP_CT_ESTABLISHED, status=ESTABLISHED_STATUS).ct,
             event("update", 3, ct.TCP_CT_SYN_SENT).ct,
             event("update", 4, ct.TCP_CT_ESTABLISHED, mark=None).ct]
    out = src.resync(table, 5.0)
    got = sorted((e.cport, e.state, e.timeout) for e, _ in out)
    assert got == [(1, C.ESTABLISHED, 900.0), (2, C.CLOSE, END_TIMEOUT), (3, C.SYN_RECV, 60.0)]
    assert set(k.sport for k in src.flows) == {1, 3}


def test_snapshot_and_to_entry_for_a_bulk():
    src = source(active=False)
    src.apply(event("new", 1, ct.TCP_CT_ESTABLISHED, status=ESTABLISHED_STATUS), 0.0)
    src.apply(event("new", 2, ct.TCP_CT_NONE), 0.0)
    keys = src.snapshot()
    entries = [src.to_entry(k, 1.0) for k in keys]
    assert [(e.cport, e.state) for e in entries if e is not None] == [(1, C.ESTABLISHED)]
    src.apply(event("destroy", 1, None), 2.0)
    assert src.to_entry(keys[0], 3.0) is None


@pytest.mark.parametrize("ct_state, ipvs", [
    (ct.TCP_CT_SYN_SENT, C.SYN_RECV), (ct.TCP_CT_SYN_RECV, C.SYN_RECV),
    (ct.TCP_CT_ESTABLISHED, C.ESTABLISHED), (ct.TCP_CT_FIN_WAIT, C.FIN_WAIT),
    (ct.TCP_CT_CLOSE_WAIT, C.CLOSE_WAIT), (ct.TCP_CT_LAST_ACK, C.LAST_ACK),
    (ct.TCP_CT_TIME_WAIT, C.TIME_WAIT), (ct.TCP_CT_CLOSE, C.CLOSE),
    (ct.TCP_CT_SYN_SENT2, C.SYN_RECV)])
def test_state_names_map_between_conntrack_and_ipvs(ct_state, ipvs):
    """The tracker's SYN_SENT (client SYN unanswered) is IPVS's SYN_RECV at the director;
    injecting back gives the one conntrack state from which the client's completing ACK is
    valid (SYN_RECV), or the same state once open."""
    assert ct.IPVS_STATE_OF_CT[ct_state] == ipvs
    back = ct.CT_STATE_OF_IPVS[ipvs]
    assert back == (ct.TCP_CT_SYN_RECV if ipvs == C.SYN_RECV else ct_state)


def test_a_restarts_flows_that_no_peer_entry_confirmed_are_ended_once_the_bulk_is_whole():
    """A node restarted as backup finds its old flows in its kernel table.  The peer's bulk
    confirms the ones it still holds (an entry arriving is enough: its injection may be
    pending); the others ended on the peer meanwhile, and `prune` hands them out as ends
    to delete, once.  A node that already took over (without the bulk) prunes nothing: it
    forwards what its kernel holds."""
    src = source(active=False)
    for port in (1, 2, 3, 4):
        src.apply(event("new", port, ct.TCP_CT_ESTABLISHED, status=ESTABLISHED_STATUS), 0.0)
    src.apply(event("destroy", 4, None), 0.5)                   # ended by itself
    src.confirm(ct.Tuple(6, CLIENT, VIP, 1, 80))                # the peer's entry, arriving
    src.apply(event("update", 2, ct.TCP_CT_TIME_WAIT, pid=INJECTOR_PID,
                    status=ESTABLISHED_STATUS), 1.0)            # the peer's, injected
    ends = src.prune(2.0)
    assert [(e.cport, e.timeout) for e in ends] == [(3, END_TIMEOUT)]
    assert src.stats["pruned"] == 1 and src.prune(3.0) == []
    src.apply(event("new", 5, ct.TCP_CT_ESTABLISHED, status=ESTABLISHED_STATUS), 4.0)
    assert src.prune(5.0) == []                                 # once: the start's table only

    took_over = source(active=False)
    took_over.apply(event("new", 1, ct.TCP_CT_ESTABLISHED, status=ESTABLISHED_STATUS), 0.0)
    took_over.set_active(True, 1.0)
    assert took_over.prune(2.0) == []


def test_a_cluster_director_refreshes_its_start_table_once_a_peer_confirms_it():
    """A cluster director is active from its start, before its peers' bulks: the flows its
    table held at start wait for a peer's entry, as a pair's do, then it refreshes them
    (its own); a peer's flow injected here that was not in that table stays its owner's."""
    src = source(active=False, pair=False)
    for port in (1, 2):
        src.apply(event("new", port, ct.TCP_CT_ESTABLISHED, status=ESTABLISHED_STATUS), 0.0)
    src.set_active(True, 1.0)
    assert src.poll(2000.0) == []
    for port in (1, 3):                     # a peer's bulk: flow 1, and its own flow 3
        src.apply(event("update" if port == 1 else "new", port, ct.TCP_CT_ESTABLISHED,
                        pid=INJECTOR_PID, status=ESTABLISHED_STATUS), 2001.0)
    assert [e.cport for e, _ in src.poll(4000.0)] == [1]
    assert src.prune(4001.0) == []          # active: it deletes nothing
