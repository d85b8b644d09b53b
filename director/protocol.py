"""Per-protocol operations, registered by protocol number (as ip_vs_proto.c).

Everything that differs between TCP and UDP is data or a method of one
`Protocol` object: its states and their timeouts, the state transition table,
which packet may open a connection and which one replaces a closing entry,
which states count as active and which sync, which entries may be evicted
from a nearly full table, when a connection counts as ASSURED, and whether
one-packet scheduling applies.  The packet path, the connection accounting
and sync look the object up by protocol number and never branch on it.

Like the kernel's split between struct ip_vs_protocol (behaviour, shared) and
ip_vs_proto_data (per network namespace: the timeout table), the classes
below are registered once and instantiated per engine with that engine's
timeouts, so two engines in one process (tests, bench) never share a table.
"""
from __future__ import annotations

from typing import Mapping

from director import tcp_state
from proto.consts import (ACK, CLOSE, CLOSE_WAIT, ESTABLISHED, FIN_WAIT, LAST_ACK, NOOUTPUT,
                          RST, SYN, TCP, TCP_STATES, TCP_SYNC_STATES, TIME_WAIT, UDP,
                          UDP_STATES)

INPUT, OUTPUT, INPUT_ONLY = tcp_state.INPUT, tcp_state.OUTPUT, tcp_state.INPUT_ONLY

#: UDP: how long after its first packet a connection must still see packets,
#: with a reply already seen, to count as a stream (nf_conntrack_udp's 2*HZ).
UDP_STREAM_AFTER = 2.0

_NO_FLAGS = (False,) * 256

#: in `next_in`: not a state, but "this packet starts a new connection over a
#: closing entry" (conn_reuse_mode 1): the engine drops the entry and reopens
REUSE = -1


class Protocol:
    """One L4 protocol's operations; subclasses fill in the class attributes."""

    number = 0
    name = ""
    #: state names, indexed by state number (the numbers sync carries)
    state_names: tuple[str, ...] = ()
    #: config timeout key of each state, in state order
    timeout_keys: tuple[str, ...] = ()
    #: NEXT[direction][TCP flags byte][state] -> next state
    next: tuple = ()
    #: indexed by TCP flags byte: may this packet open a connection (conn_schedule)
    opens: tuple[bool, ...] = _NO_FLAGS
    #: indexed by TCP flags byte: is this the first packet of a new connection
    #: (is_new_conn), which replaces an entry in a `reusable_states` state
    new_conn: tuple[bool, ...] = _NO_FLAGS
    #: states in which a new connection's first packet replaces the entry
    #: (conn_reuse_mode 1)
    reusable_states: frozenset[int] = frozenset()
    #: states counted in the dest's active connections; all others are inactive
    active_states: frozenset[int] = frozenset()
    #: states whose entries the sync policy sends to the peer
    sync_states: frozenset[int] = frozenset()
    #: states in which even an ASSURED entry may be evicted when the table is
    #: nearly full (nf_conntrack's can_early_drop)
    early_drop_states: frozenset[int] = frozenset()
    #: one-packet scheduling (ipvsadm -o) is allowed
    one_packet = False
    #: seconds after its first packet before a connection can become ASSURED
    #: (proves_two_way is not asked earlier)
    assure_after = 0.0

    def __init__(self, timeouts: Mapping[str, float]) -> None:
        self.set_timeouts(timeouts)
        #: the inbound rows indexed by (connection flags & NOOUTPUT): INPUT
        #: once a reply was seen, INPUT_ONLY before (saves a branch per packet)
        # and with REUSE where a new connection's first packet meets a closing
        # entry, so the per-packet step needs no separate reuse test
        rows = [self._with_reuse(self.next[INPUT])] * (NOOUTPUT + 1)
        rows[NOOUTPUT] = self._with_reuse(self.next[INPUT_ONLY])
        self.next_in = tuple(rows)
        self.next_out = self.next[OUTPUT]
        # the same sets as tuples indexed by state, and the first state as a tuple indexed
        # by flags: what every state change and every new connection asks, without a
        # hash or a call (Connections.set_state, Engine._new)
        n = len(self.state_names)
        self.inactive_in = tuple(s not in self.active_states for s in range(n))
        self.closing_in = tuple(s in self.early_drop_states for s in range(n))
        self.initial = tuple(self.initial_state(f) for f in range(256))

    def set_timeouts(self, timeouts: Mapping[str, float]) -> None:
        """Take the timeouts of a (new) config; connections pick them up at
        their next packet."""
        self.timeouts = tuple(float(timeouts[k]) for k in self.timeout_keys)
        self.ops_timeout = float(timeouts["udp_ops"])

    def _with_reuse(self, row: tuple) -> tuple:
        return tuple(
            tuple(REUSE if self.new_conn[f] and s in self.reusable_states else nxt
                  for s, nxt in enumerate(cells))
            for f, cells in enumerate(row))

    def initial_state(self, flags: int) -> int:
        """The state a new connection enters with its first (client) packet."""
        return self.next[INPUT_ONLY][flags][0]

    def timeout_of(self, conn) -> float:
        """The full timeout of the connection's current state (cp->timeout)."""
        return self.timeouts[conn.state]

    def proves_two_way(self, conn, data: bytes, pkt, inbound: bool, now: float) -> bool:
        """Called for each packet of a not yet ASSURED connection that has seen a
        reply, after its state moved; True when the connection has now shown it
        is real two-way traffic.  Subclasses say what that takes."""
        return False


_REGISTRY: dict[int, type[Protocol]] = {}


def register(cls: type[Protocol]) -> type[Protocol]:
    """Register a protocol class under its number (register_ip_vs_protocol)."""
    if cls.number in _REGISTRY:
        raise ValueError(f"protocol {cls.number} registered twice")
    _REGISTRY[cls.number] = cls
    return cls


def make_protocols(timeouts: Mapping[str, float]) -> dict[int, Protocol]:
    """One instance of every registered protocol, for one engine."""
    return {number: cls(timeouts) for number, cls in _REGISTRY.items()}


def registered() -> dict[int, type[Protocol]]:
    return dict(_REGISTRY)


@register
class Tcp(Protocol):
    """TCP: IPVS's state table; ASSURED as nf_conntrack's TCP tracker sets it."""

    number = TCP
    name = "tcp"
    state_names = TCP_STATES
    timeout_keys = tuple(f"tcp_{s.lower()}" for s in TCP_STATES)
    next = tcp_state.NEXT
    # tcp_conn_schedule: only a SYN without RST opens a connection (a SYN+ACK
    # too, as the kernel's comment says, for active FTP)
    opens = tuple(bool(f & SYN) and not f & RST for f in range(256))
    # is_new_conn (ip_vs_core.c): a SYN without ACK or RST starts a new connection
    new_conn = tuple(bool(f & SYN) and not f & (ACK | RST) for f in range(256))
    reusable_states = frozenset((TIME_WAIT, CLOSE))
    active_states = frozenset((ESTABLISHED,))
    sync_states = TCP_SYNC_STATES
    # tcp_can_early_drop (nf_conntrack_proto_tcp.c)
    early_drop_states = frozenset((FIN_WAIT, LAST_ACK, TIME_WAIT, CLOSE, CLOSE_WAIT))

    #: how far past the SYN-ACK's sequence number the client's ACK may reach
    #: and still acknowledge it (data sent with the SYN-ACK, e.g. TCP Fast Open)
    ACK_WINDOW = 1 << 16

    def proves_two_way(self, conn, data: bytes, pkt, inbound: bool, now: float) -> bool:
        """nf_conntrack: ASSURED once a SYN_RECV connection (a SYN-ACK came back
        from the server) sees the client's ACK and reaches ESTABLISHED.  Here the
        server's SYN-ACK sequence number is kept, and the client's ACK must
        acknowledge it (as conntrack's window check would): a spoofed SYN then
        a blind ACK never make an entry ASSURED, even with the server answering."""
        flags = pkt.flags
        if not inbound:
            if flags & (SYN | ACK | RST) == SYN | ACK:
                conn.synack_seq = int.from_bytes(data[pkt.l4 + 4:pkt.l4 + 8], "big")
            return False
        if conn.synack_seq < 0 or conn.state != ESTABLISHED or flags & (SYN | ACK | RST) != ACK:
            return False
        ack = int.from_bytes(data[pkt.l4 + 8:pkt.l4 + 12], "big")
        return 0 < (ack - conn.synack_seq) % (1 << 32) <= self.ACK_WINDOW


@register
class Udp(Protocol):
    """UDP: one state; ASSURED as nf_conntrack's UDP tracker sets it."""

    number = UDP
    name = "udp"
    state_names = UDP_STATES
    timeout_keys = ("udp",)
    next = tuple((tuple(0 for _ in UDP_STATES),) * 256 for _ in range(3))
    opens = (True,) * 256
    one_packet = True
    assure_after = UDP_STREAM_AFTER

    def proves_two_way(self, conn, data: bytes, pkt, inbound: bool, now: float) -> bool:
        """nf_conntrack_udp_packet: ASSURED only when, with a reply already
        seen, packets still flow UDP_STREAM_AFTER seconds after the first one.
        A one-shot request/response exchange (DNS) never becomes ASSURED, so it
        stays evictable from a full table.  (The engine asks only from
        `assure_after` = UDP_STREAM_AFTER on, so each packet of a young flow
        costs no call.)"""
        return True
