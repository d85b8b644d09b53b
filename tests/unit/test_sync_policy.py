"""ip_vs_sync_conn_needed, checked against hand-computed packet sequences.

Most tests pin the kernel's exact rule (KernelPolicy: on_established off); the
tests at the end cover tandem's one departure, the send on entering ESTABLISHED."""
from __future__ import annotations

import functools
import ipaddress

import pytest
from scapy.layers.inet import IP, TCP

from director.conn import Conn
from director.engine import Engine
from director.tcp_state import (CLOSE, CLOSE_WAIT, ESTABLISHED, FIN_WAIT, LAST_ACK, SYN_RECV,
                                SYN_SENT, TIME_WAIT)
from proto.sync import SyncEntry
from syncd.config import SyncConfig
from syncd.policy import SyncPolicy, make_hook
from tests.helpers import CLIENT, VIP, make_config, tcp, udp

pk = lambda a: ipaddress.ip_address(a).packed
KernelPolicy = functools.partial(SyncPolicy, on_established=False, on_syn=False)


def conn(proto=6, created=0.0) -> Conn:
    c = Conn(proto, pk("198.18.1.10"), 40000, pk(VIP), 80, pk("198.18.2.100"), 6000, pk("198.18.2.21"), 8080)
    c.created = c.sync_endtime = created      # as Engine._new stamps a new connection
    return c


def run(policy, c, states, timeout=900.0, t0=0.0, dt=0.001):
    """Feed packets 1..len(states); states[i] is the state after packet i+1."""
    sent = []
    for i, st in enumerate(states):
        c.state = st
        if policy.needed(c, i + 1, t0 + i * dt, timeout):
            sent.append(i + 1)
    return sent


def test_defaults_are_the_kernels():
    p = SyncPolicy()
    assert (p.threshold, p.period, p.refresh_period, p.retries) == (3, 50, 0.0, 0)
    cfg = SyncConfig()
    q = SyncPolicy.from_config(cfg)
    assert (q.threshold, q.period, q.refresh_period, q.retries) == (3, 50, 0.0, 0)


def test_established_tcp_is_sent_on_packets_3_53_103():
    assert run(KernelPolicy(), conn(), [SYN_RECV] + [ESTABLISHED] * 199) == [3, 53, 103, 153]


def test_established_late_is_first_sent_at_the_next_period_point():
    # entering ESTABLISHED alone never forces a send; packet 3 came while SYN_RECV
    assert run(KernelPolicy(), conn(), [SYN_RECV] * 5 + [ESTABLISHED] * 100) == [53, 103]


@pytest.mark.parametrize("state", [SYN_RECV, SYN_SENT, LAST_ACK, 0, 9, 10])
def test_unsynced_tcp_states_are_never_sent(state):
    assert run(KernelPolicy(), conn(), [state] * 200) == []


@pytest.mark.parametrize("state", [FIN_WAIT, CLOSE, CLOSE_WAIT, TIME_WAIT])
def test_a_change_into_a_closing_state_is_sent_at_once(state):
    states = [SYN_RECV, ESTABLISHED, ESTABLISHED] + [ESTABLISHED] * 6 + [state] * 91
    # 3 (threshold), 10 (the change), then the period points again: 53
    assert run(KernelPolicy(), conn(), states) == [3, 10, 53]


def test_each_change_between_closing_states_is_sent():
    states = [SYN_RECV, ESTABLISHED, ESTABLISHED, CLOSE_WAIT, CLOSE_WAIT, TIME_WAIT, TIME_WAIT, CLOSE]
    assert run(KernelPolicy(), conn(), states) == [3, 4, 6, 8]


def test_closing_state_reached_from_syn_recv_is_sent():
    # SYN_RECV -> CLOSE (e.g. a RST) on packet 2; packet 3 is then the threshold
    assert run(KernelPolicy(), conn(), [SYN_RECV, CLOSE, CLOSE, CLOSE]) == [2, 3]


def test_udp_on_packets_3_53_103():
    assert run(KernelPolicy(), conn(17), [0] * 120) == [3, 53, 103]


def test_other_thresholds():
    assert run(KernelPolicy(0, 1), conn(17), [0] * 5) == [1, 2, 3, 4, 5]
    assert run(KernelPolicy(1, 10), conn(17), [0] * 25) == [1, 11, 21]
    assert run(KernelPolicy(0, 10), conn(17), [0] * 25) == [10, 20]


def test_period_zero_sends_once_plus_state_changes():
    p = KernelPolicy(3, 0)
    assert run(p, conn(17), [0] * 200) == [3]
    states = [SYN_RECV, ESTABLISHED] + [ESTABLISHED] * 98 + [FIN_WAIT] * 10 + [TIME_WAIT] * 10
    assert run(p, conn(), states) == [3, 101, 111]


def test_bad_values_are_refused():
    for args in ((3, 3), (5, 4), (-1, 50), (3, 50, -1.0), (3, 50, 0.0, 4)):
        with pytest.raises(ValueError):
            KernelPolicy(*args)


def test_templates_skip_the_state_and_packet_tests():
    p = SyncPolicy()
    c = conn()
    c.state = SYN_RECV
    assert all(p.needed(c, n, n * 0.001, 60.0, template=True) for n in range(1, 10))
    assert not KernelPolicy(persist_mode=True).needed(conn(17), 3, 0.0, 300.0, controlled=True)
    assert KernelPolicy(persist_mode=True).needed(conn(17), 3, 0.0, 300.0)


# -- sync_refresh_period and sync_retries, in jiffies (HZ 1000) ------------------------

def test_refresh_period_sends_when_the_reported_expiry_moved_enough():
    # period 0, refresh 10 s, UDP timeout 300 s, one packet a second
    p = KernelPolicy(3, 0, refresh_period=10.0)
    c = conn(17)
    sent = [t for t in range(0, 41) if p.needed(c, t + 1, float(t), 300.0)]
    # t=0: n=300000, orig=0 -> |diff| is large: sent.  Then every 10 s of expiry movement.
    assert sent == [0, 10, 20, 30, 40]
    assert c.sync_endtime == 340.0


def test_refresh_period_with_retries_at_an_eighth_of_the_period():
    p = KernelPolicy(3, 0, refresh_period=10.0, retries=2)
    c = conn(17)
    assert p.needed(c, 1, 0.0, 300.0)                  # orig 0 -> n 300000: sent
    assert c.sync_endtime == 300.0
    assert not p.needed(c, 2, 1.0, 300.0)              # 1000 < 300000-300000+1250
    assert p.needed(c, 3, 2.0, 300.0)                  # retry 1: n = 302000|1
    assert c.sync_endtime == 302.001 and SyncPolicy.retry_count(c) == 1
    assert not p.needed(c, 4, 3.0, 300.0)              # 3000 < 302001-300000+1250 = 3251
    assert p.needed(c, 5, 3.5, 300.0)                  # retry 2: n = 303500|2
    assert c.sync_endtime == 303.502 and SyncPolicy.retry_count(c) == 2
    assert not p.needed(c, 6, 4.0, 300.0)              # retries used up
    assert not p.needed(c, 7, 13.49, 300.0)            # n 313488, diff 9986 < 10000
    assert p.needed(c, 8, 13.51, 300.0)                # n 313508, diff 10006: a normal send
    assert c.sync_endtime == 313.508 and SyncPolicy.retry_count(c) == 0


def test_refresh_period_is_capped_by_half_the_timeout_or_10s():
    # refresh 100 s but timeout 60 s: min_diff = max(30, 10) = 30 s wins
    p = KernelPolicy(3, 0, refresh_period=100.0)
    c = conn(17)
    sent = [t for t in range(0, 100, 5) if p.needed(c, t + 1, float(t), 60.0)]
    assert sent == [0, 30, 60, 90]


def test_refresh_with_a_period_still_needs_the_packet_count():
    p = KernelPolicy(3, 50, refresh_period=10.0)
    c = conn(17)
    sent = [n for n in range(1, 300) if p.needed(c, n, n * 0.125, 300.0)]
    # 3 (t=0.375), 53 (t=6.625: the expiry moved 6.252 s < 10 s: refused),
    # 103 (t=12.875: 12.5 s), 153 refused, 203 sent, 253 refused
    assert sent == [3, 103, 203]


def test_refresh_lets_a_forced_established_change_through_only_with_the_count():
    p = KernelPolicy(3, 50, refresh_period=10.0)
    c = conn()
    assert run(p, c, [SYN_RECV, ESTABLISHED, ESTABLISHED, FIN_WAIT]) == [3, 4]


def test_a_new_connections_creation_stamp_carries_no_retry_count():
    c = conn(17, created=0.0137)                       # jiffies 13 -> & ~3 = 12
    assert SyncPolicy.retry_count(c) == 0               # (13 & 3 would read as 1)
    p = KernelPolicy(3, 0, refresh_period=5.0, retries=1)
    # timeout 3 s: n = 3012, diff 3000 < min(5000, 10000), retries 0 < 1, and
    # now 13 >= 12 - 3000 + 625: sent as retry 1
    assert p.needed(c, 1, 0.0137, 3.0)
    assert c.sync_endtime == 3.013 and SyncPolicy.retry_count(c) == 1
    assert not p.needed(c, 2, 0.7, 3.0)                 # diff 687, retries used up


# -- the policy on the engine's hook ------------------------------------------------

def _engine_with_hook(policy):
    eng = Engine(make_config())
    sends = []

    def hook(c, pkts, now):
        if policy.needed(c, pkts, now, eng.timeout_of(c)):
            sends.append((pkts, c.state))
    eng.sync_hook = hook
    return eng, sends


def test_engine_tcp_connection_is_sent_on_exactly_the_expected_packets():
    eng, sends = _engine_with_hook(KernelPolicy())
    fwd = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))                 # pkt 1
    rs, laddr, lport = fwd.dst, fwd.src, fwd[TCP].sport
    assert eng.handle(tcp(rs, laddr, 8080, lport, "SA"), 0.0)                  # reply
    ack = tcp(CLIENT, VIP, 40000, 80, "A")
    for i in range(2, 111):                                                     # pkts 2..110
        assert eng.handle(ack, i * 0.01)
    eng.handle(tcp(CLIENT, VIP, 40000, 80, "FA"), 1.2)                          # pkt 111: CLOSE_WAIT
    eng.handle(tcp(rs, laddr, 8080, lport, "FA"), 1.3)                          # reply: TIME_WAIT
    eng.handle(ack, 1.4)                                                        # pkt 112
    eng.handle(ack, 1.5)                                                        # pkt 113
    assert sends == [(3, ESTABLISHED), (53, ESTABLISHED), (103, ESTABLISHED),
                     (111, CLOSE_WAIT), (112, TIME_WAIT)]


def test_engine_udp_flow_is_sent_on_3_53_103():
    eng, sends = _engine_with_hook(KernelPolicy())
    d = udp(CLIENT, VIP, 5353, 80)
    for i in range(120):
        assert eng.handle(d, i * 0.01)
    assert [p for p, _ in sends] == [3, 53, 103]


def test_engine_connection_that_never_completes_is_never_sent():
    eng, sends = _engine_with_hook(KernelPolicy())
    syn = tcp(CLIENT, VIP, 40000, 80, "S")
    for i in range(60):
        eng.handle(syn, i * 0.01)
    assert sends == []


def test_make_hook_queues_entries_describing_the_connection():
    eng = Engine(make_config())
    queued = []
    eng.sync_hook = make_hook(KernelPolicy(), eng, lambda e, now, urgent=False: queued.append((e, now)))
    fwd = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
    eng.handle(tcp(fwd.dst, fwd.src, 8080, fwd[TCP].sport, "SA"), 0.0)
    for i in range(2, 4):
        eng.handle(tcp(CLIENT, VIP, 40000, 80, "A"), 1.0)
    assert len(queued) == 1
    e, now = queued[0]
    c = next(iter(eng.table))
    assert isinstance(e, SyncEntry) and now == 1.0
    assert (e.laddr, e.lport, e.daddr, e.dport, e.state, e.timeout, e.in_pkts) == \
        (c.laddr, c.lport, c.daddr, c.dport, ESTABLISHED, 900.0, 3)


# -- tandem's departure: a change into ESTABLISHED is sent at once -------------------

def test_entering_established_is_sent_at_once_and_urgent():
    """The kernel (ip_vs_sync_conn_needed) lets a change into ESTABLISHED wait for the
    threshold packet; tandem sends it on the packet that makes the change, URGENT."""
    from syncd.policy import URGENT
    p, c = SyncPolicy(on_syn=False), conn()
    assert run(p, c, [SYN_RECV] * 5 + [ESTABLISHED] * 100) == [6, 53, 103]
    c2 = conn()
    c2.state = SYN_RECV
    assert not p.needed(c2, 1, 0.0, 60.0)
    c2.state = ESTABLISHED
    assert p.needed(c2, 2, 0.001, 900.0) == URGENT
    assert p.needed(c2, 3, 0.002, 900.0) is True            # the threshold packet, as before


def test_a_new_connection_is_sent_when_its_syn_is_scheduled_once_and_urgent():
    """A client's handshake can complete while its ACK still waits in the dying master's
    queue; the backup must already hold the entry (SYN_RECV), whose ACK then takes it to
    ESTABLISHED as IPVS's TCP table does.  The kernel sends nothing before packet 3."""
    from syncd.policy import URGENT
    p = SyncPolicy()
    c = conn()
    c.state = SYN_RECV
    assert p.needed(c, 1, 0.0, 60.0) == URGENT
    assert not p.needed(c, 2, 0.01, 60.0)                      # a retransmitted SYN: once
    assert run(SyncPolicy(), conn(), [SYN_RECV, ESTABLISHED, ESTABLISHED]) == [1, 2, 3]
    assert run(SyncPolicy(on_syn=False), conn(), [SYN_RECV, ESTABLISHED, ESTABLISHED]) == [2, 3]


def test_a_reused_client_port_that_reaches_established_again_is_sent():
    """The lost-connection bug of the sync lab test: a client reuses its port while the
    old entry is still CLOSE_WAIT (its 60th packet long past the threshold).  IPVS's
    TCP table takes the SYN to SYN_RECV on the same entry and the ACK to ESTABLISHED;
    with the kernel's rule nothing is sent until packet 103, so a backup keeps the old
    closing entry and a failover loses the new connection.  tandem sends the change."""
    def scenario(policy):
        eng, sends = _engine_with_hook(policy)
        fwd = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
        rs, laddr, lport = fwd.dst, fwd.src, fwd[TCP].sport
        eng.handle(tcp(rs, laddr, 8080, lport, "SA"), 0.0)
        for i in range(2, 60):
            eng.handle(tcp(CLIENT, VIP, 40000, 80, "A"), i * 0.01)
        eng.handle(tcp(CLIENT, VIP, 40000, 80, "FA"), 0.7)                     # CLOSE_WAIT
        del sends[:]
        eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 1.0)                      # the port again
        eng.handle(tcp(rs, laddr, 8080, lport, "SA"), 1.0)
        eng.handle(tcp(CLIENT, VIP, 40000, 80, "A"), 1.01)
        eng.handle(tcp(CLIENT, VIP, 40000, 80, "PA", b"x"), 1.02)
        (c,) = list(eng.table)
        assert c.state == ESTABLISHED
        return sends

    assert scenario(KernelPolicy()) == []                     # the kernel's rule: not sent
    assert scenario(SyncPolicy(on_syn=False)) == [(62, ESTABLISHED)]


def test_make_hook_passes_urgency_to_the_queue():
    eng = Engine(make_config())
    queued = []
    eng.sync_hook = make_hook(SyncPolicy(), eng, lambda e, now, urgent=False: queued.append((e.in_pkts, urgent)))
    fwd = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
    eng.handle(tcp(fwd.dst, fwd.src, 8080, fwd[TCP].sport, "SA"), 0.0)
    for _ in range(2):
        eng.handle(tcp(CLIENT, VIP, 40000, 80, "A"), 1.0)
    assert queued == [(1, True), (2, True), (3, False)]


def test_a_new_connection_synced_at_its_syn_replaces_the_backups_closed_entry():
    """On the master a SYN on a TIME_WAIT entry is a new connection (conn_reuse_mode);
    the backup must take the synced SYN_RECV entry over its own closed copy, though an
    INACTIVE entry never replaces a live one (ip_vs_proc_conn's rule)."""
    master, backup = Engine(make_config()), Engine(make_config())
    sent = []
    master.sync_hook = make_hook(SyncPolicy(), master, lambda e, now, urgent=False: sent.append(e))

    def to_backup(now):
        for e in sent:
            backup.apply_synced(**e.apply_kwargs(), now=now)
        del sent[:]

    fwd = IP(master.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
    rs, laddr, lport = fwd.dst, fwd.src, fwd[TCP].sport
    master.handle(tcp(rs, laddr, 8080, lport, "SA"), 0.0)
    master.handle(tcp(CLIENT, VIP, 40000, 80, "A"), 0.01)
    master.handle(tcp(CLIENT, VIP, 40000, 80, "FA"), 0.02)
    master.handle(tcp(rs, laddr, 8080, lport, "FA"), 0.02)
    master.handle(tcp(CLIENT, VIP, 40000, 80, "A"), 0.03)                 # TIME_WAIT
    to_backup(0.05)
    (old,) = list(backup.table)
    assert old.state == TIME_WAIT
    master.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 1.0)                  # the port again
    (new,) = list(master.table)
    assert (new.laddr, new.lport) != (old.laddr, old.lport) and new.state == SYN_RECV
    to_backup(1.0)
    (got,) = list(backup.table)
    assert (got.laddr, got.lport, got.state) == (new.laddr, new.lport, SYN_RECV)


def test_the_hook_queues_the_same_bytes_and_urgency_packed():
    """make_hook with queue_packed (the node's path) hands the sender the very bytes and
    urgency the entry path does, packet for packet, over a whole short connection."""
    from proto.sync import pack_entry
    got = {}
    for packed in (False, True):
        eng = Engine(make_config())
        out = got[packed] = []
        if packed:
            eng.sync_hook = make_hook(SyncPolicy(), eng, None,
                                      lambda b, now, urgent=False: out.append((b, urgent)))
        else:
            eng.sync_hook = make_hook(SyncPolicy(), eng,
                                      lambda e, now, urgent=False: out.append((pack_entry(e), urgent)))
        fwd = IP(eng.handle(tcp(CLIENT, VIP, 40000, 80, "S"), 0.0))
        rs, laddr, lport = fwd.dst, fwd.src, fwd[TCP].sport
        eng.handle(tcp(rs, laddr, 8080, lport, "SA"), 0.001)
        eng.handle(tcp(CLIENT, VIP, 40000, 80, "A"), 0.002)
        eng.handle(tcp(CLIENT, VIP, 40000, 80, "PA"), 0.003)
        eng.handle(tcp(rs, laddr, 8080, lport, "PA"), 0.004)
        eng.handle(tcp(CLIENT, VIP, 40000, 80, "FA"), 0.005)
        eng.handle(tcp(rs, laddr, 8080, lport, "FA"), 0.006)
        eng.handle(tcp(CLIENT, VIP, 40000, 80, "A"), 0.007)
    assert got[True] == got[False]
    assert [u for _, u in got[True]] == [True, True, False, False, False]
