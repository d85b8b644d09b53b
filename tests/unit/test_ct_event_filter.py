"""director.ct_events.state_filter: the socket filter the kernel runs on every conntrack
event before it queues it for the node.  Run here by the kernel itself, on an AF_UNIX
datagram socket (classic BPF filters any socket, no privilege needed), with the kernel's
own event bytes; then what passes is fed to the node's consumers to show nothing they rely
on is lost (the active/inactive counts, sync's ESTABLISHED and end)."""
from __future__ import annotations

import socket

import pytest

from director import ct_events
from director.kernel_flows import KernelFlows
from director.kernel_rules import MARK_BASE
from proto import ctnetlink as c

from tests.unit.test_ctnetlink import KERNEL_TCP4_NEW, KERNEL_UDP6_NEW

# where the kernel put the TCP state byte in KERNEL_TCP4_NEW (SYN_SENT there)
_STATE_AT = KERNEL_TCP4_NEW.index(bytes.fromhex("2c000180050001000100000005000200")) + 8


def _event(state: int, *, new: bool = False, mark: int | None = None, pid: int = 0) -> bytes:
    """KERNEL_TCP4_NEW as the kernel sends a later update of that flow: no NLM_F_CREATE,
    the TCP state `state`; `pid`, the port id of the netlink request that caused it (0:
    traffic did)."""
    b = bytearray(KERNEL_TCP4_NEW)
    b[12:16] = pid.to_bytes(4, "little")
    if not new:
        b[6:8] = (0).to_bytes(2, "little")
    b[_STATE_AT] = state
    return bytes(b)


@pytest.fixture
def filtered():
    rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ct_events.attach_filter(rx, ct_events.state_filter())
    rx.setblocking(False)

    def through(datagrams: list[bytes]) -> list[bytes]:
        for d in datagrams:
            tx.send(d)
        out = []
        while True:
            try:
                out.append(rx.recv(1 << 16))
            except BlockingIOError:
                return out
    yield through
    rx.close()
    tx.close()


def test_the_state_updates_the_node_needs_pass_whole_and_the_others_are_dropped(filtered):
    assert c.decode(_event(c.TCP_CT_SYN_SENT))[0].ct.tcp.state == c.TCP_CT_SYN_SENT
    passing = [c.TCP_CT_ESTABLISHED, c.TCP_CT_FIN_WAIT, c.TCP_CT_CLOSE, c.TCP_CT_SYN_SENT,
               c.TCP_CT_SYN_SENT2, c.TCP_CT_NONE]
    sent = {s: _event(s) for s in range(len(c.TCP_CT_STATES))}
    got = filtered(list(sent.values()))
    assert got == [sent[s] for s in sorted(passing)]          # in order, not cut short
    assert set(sent) - set(passing) == set(ct_events.SKIPPED_TCP_STATES)


def test_new_flows_destroys_and_updates_without_tcp_state_always_pass(filtered):
    skipped = c.TCP_CT_TIME_WAIT
    destroy = bytearray(_event(skipped))
    destroy[4:6] = c.MSG_DELETE.to_bytes(2, "little")
    no_create_udp = bytearray(KERNEL_UDP6_NEW)
    no_create_udp[6:8] = (0).to_bytes(2, "little")
    sent = [_event(skipped, new=True), bytes(destroy), KERNEL_UDP6_NEW, bytes(no_create_udp),
            b"\x00" * 8]
    assert filtered(sent) == sent
    assert [m.event for m in c.decode(sent[1])] == ["destroy"]


def _flow_events(mark: int) -> list[bytes]:
    """Every event of one short connection as the kernel sends them: NEW (SYN_SENT),
    SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, DESTROY."""
    def marked(b: bytes) -> bytes:
        m = c.decode(b)[0]
        return c.encode(m._replace(ct=m.ct._replace(mark=mark)), pid=0)
    states = [c.TCP_CT_SYN_RECV, c.TCP_CT_ESTABLISHED, c.TCP_CT_FIN_WAIT, c.TCP_CT_CLOSE_WAIT,
              c.TCP_CT_LAST_ACK, c.TCP_CT_TIME_WAIT]
    out = [marked(_event(c.TCP_CT_SYN_SENT, new=True))] + [marked(_event(s)) for s in states]
    end = bytearray(out[-1])
    end[4:6] = c.MSG_DELETE.to_bytes(2, "little")
    return out + [bytes(end)]


def test_the_view_counts_as_with_every_event_at_each_step_the_node_reads(filtered):
    """Active (ESTABLISHED) and inactive counts, as IPVS keeps them, and the view itself are
    the same whether it reads all eight events or the four the filter lets through, after
    each one."""
    mark = MARK_BASE | 7
    events = _flow_events(mark)
    every, some = KernelFlows(), KernelFlows()
    kept = 0
    for raw in events:
        every.apply(c.decode(raw)[0])
        for passed in filtered([raw]):
            some.apply(c.decode(passed)[0])
            kept += 1
        assert some.active_inactive(mark) == every.active_inactive(mark), c.decode(raw)[0]
        assert some.flows == every.flows         # the view, state included, as a dump reads
    assert kept == 4
    assert every.active_inactive(mark) == (0, 0) and not some.flows


def test_an_update_a_netlink_request_made_passes_whatever_its_state(filtered):
    """An entry the node injects over one it holds (a peer's bulk: TIME_WAIT over
    ESTABLISHED, as after a port's reuse) changes the state by request, not by traffic.
    The kernel stamps such an event with the requester's port id (traffic's carry 0;
    measured with `conntrack -I/-U` in a namespace): it passes, so the view follows the
    injected state; the same update caused by traffic is dropped as before."""
    assert int.from_bytes(KERNEL_TCP4_NEW[12:16], "little") == 0
    for state in ct_events.SKIPPED_TCP_STATES:
        by_request = _event(state, pid=3729566701)
        assert filtered([_event(state), by_request]) == [by_request]
