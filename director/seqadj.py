"""Sequence adjustment for bytes the director inserts into a TCP stream (sans-IO, pure).

When the director puts a PROXY header in front of a connection's first client
data byte, the real server's byte stream is the client's with `delta` more
bytes in it.  From then on every client->server sequence number after the
insertion point is `delta` higher in the server's space, and every
server->client acknowledgement number and SACK edge is `delta` lower in the
client's space.  The state is IPVS's (struct ip_vs_seq): `init_seq`, the
client's sequence number of the insertion point; `delta`, the shift after it;
`previous_delta`, the shift at and before it (0 for one PROXY header, kept so
the state has the shape IPVS syncs).

The header sits at server positions init_seq+previous_delta .. init_seq+delta-1,
in front of the client's byte `init_seq`.  A client segment whose first
position is `init_seq` (and that holds data or a FIN) gets the header put in
front of its payload, with its sequence number left at init_seq: the first
copy and every retransmission of it occupy the same server positions, so the
server's TCP keeps exactly one header in the stream whatever the network does.
Any other segment starting after init_seq is shifted by delta; one starting at
or before it (a keepalive probe, the client's pure ACK or RST before any data)
keeps its number (previous_delta), so a connection that never sent data
still closes or resets in the server's window.

An acknowledgement that covers only part of the header maps to init_seq: the
client learns nothing of the header, and nothing of its own data is acked
until the server has all of the header.  All arithmetic is modulo 2**32 with
serial-number comparison (RFC 1982), as the kernel's before()/after().
"""
from __future__ import annotations

__all__ = ["SeqAdj", "after", "before", "MOD"]

MOD = 1 << 32
_MASK = MOD - 1
_HALF = 1 << 31


def after(a: int, b: int) -> bool:
    """a comes after b in sequence space (the kernel's after(a, b))."""
    return 0 < ((a - b) & _MASK) < _HALF


def before(a: int, b: int) -> bool:
    return after(b, a)


class SeqAdj:
    """One connection's shift.  init_seq: the client's sequence number of its first
    data byte (its ISN + 1); delta: how many bytes the director inserts there."""

    __slots__ = ("init_seq", "delta", "previous_delta", "header", "inserted", "announced",
                 "refused", "own_passes")

    def __init__(self, init_seq: int, header: bytes, previous_delta: int = 0) -> None:
        self.init_seq = init_seq & _MASK
        self.header = header
        self.previous_delta = previous_delta
        self.delta = previous_delta + len(header)
        #: how many client segments got the header (1 + retransmissions of the first);
        #: counted by whoever sends them (a segment may still be dropped)
        self.inserted = 0
        #: the sync policy has sent the peer this state with the header marked sent
        #: (syncd.policy: once, urgently, when the header first goes out)
        self.announced = False
        #: the client sent a PROXY header of its own and the service refuses that: the
        #: connection forwards no client packet any more (director.proxy_insert)
        self.refused = False
        #: a client that opens with a header of its own has it passed through (else refused)
        self.own_passes = False

    def client_segment(self, seq: int, syn: bool, fin: bool, payload_len: int) -> tuple[int, bytes]:
        """A client->server segment: (its sequence number in the server's space, the
        bytes to put in front of its payload: the header, or b"")."""
        first = (seq + 1) & _MASK if syn else seq
        if first == self.init_seq and (payload_len or fin):
            return (seq + self.previous_delta) & _MASK, self.header
        return self.seq_in(seq), b""

    def seq_in(self, seq: int) -> int:
        """vs_fix_seq: a client sequence number in the server's space."""
        if after(seq, self.init_seq):
            return (seq + self.delta) & _MASK
        return (seq + self.previous_delta) & _MASK

    def ack_out(self, ack: int) -> int:
        """vs_fix_ack_seq: a server ack number (or SACK edge) in the client's space."""
        init = self.init_seq
        end = (init + self.delta) & _MASK
        if not before(ack, end):
            return (ack - self.delta) & _MASK
        if after(ack, (init + self.previous_delta) & _MASK):
            return init         # inside the inserted bytes: none of the client's data yet
        return (ack - self.previous_delta) & _MASK

    def pass_through(self) -> None:
        """Insert nothing after all (the client's own header goes through as it came):
        no shift anywhere, and the decision is as final as a sent header."""
        self.header = b""
        self.delta = self.previous_delta

    @property
    def decided(self) -> bool:
        """The first data byte has been seen: the header went out, or the client's own
        header was passed through or refused.  What the peer must learn at once."""
        return self.inserted > 0 or self.refused or self.delta == self.previous_delta

    def sync_option(self) -> tuple[int, int, int, bool, int, bool]:
        """(init_seq, delta, previous_delta, sent, version, refused): the entry options
        "seq" and "refused" that carry this state to the peer (proto.sync), version the
        PROXY header's (delta == previous_delta: none is written)."""
        version = 2 if self.header[:1] in (b"\r", b"") else 1     # v2 opens with its signature
        return (self.init_seq, self.delta, self.previous_delta, self.decided, version,
                self.refused)

    def state(self) -> tuple[int, int, int]:
        """(init_seq, delta, previous_delta), what IPVS_OPT_SEQ_DATA carries."""
        return self.init_seq, self.delta, self.previous_delta
