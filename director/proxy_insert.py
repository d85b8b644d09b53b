"""The client's address for real servers: a PROXY header in front of a TCP stream.

The packet half of `client_address = "proxy-v1" | "proxy-v2"` (engine forwarding).
Its state is a `StreamHeader` (director.seqadj's shift, and the packet work done
with it), the connection's client-address state (director.client_address): a plain
service pays one attribute test per packet.

- `begin` makes the state on the client's SYN: the header names the client and
  the VIP it connected to, and goes in front of the byte after the SYN.
- `client_to_server` runs on every client packet before the FULLNAT rewrite:
  the segment that starts at the insertion point gets the header in front of
  its payload (IP length and both checksums follow), every later one has its
  sequence number shifted.
- `server_to_client` runs on every reply before the rewrite: the ack number and
  every SACK edge are shifted back, and the SYN-ACK's MSS option is lowered by
  the header's length.

Why the MSS clamp rather than a header segment of its own: the engine answers
each queued packet with one verdict, so it cannot turn one segment into two.
Lowering the MSS the real server announces by the header's length makes the
client's largest segment plus the header exactly what the server said it can
take, so the first segment never outgrows the path (DPVS lowers it for TOA by
the option's length for the same reason).  The clamp costs the client those
few bytes in every full-size segment of the connection.
"""
from __future__ import annotations

import struct

from director.client_address import Event
from director.seqadj import SeqAdj
from proto import packet as P
from proto import proxy
from proto.checksum import checksum, delta, fold, ones_sum, pseudo_header_sum, update
from proto.consts import TCP
from proto.sync import OPT_SEQ, seq_options

__all__ = ["MODES", "OWN_HEADER", "REFUSED", "StreamHeader", "begin", "resume", "client_to_server",
           "server_to_client", "quoted_seq_shift"]

#: the modes of `client_address` this module serves, by the PROXY version they write
MODES = {"proxy-v1": 1, "proxy-v2": 2}

#: what a service does with a client whose first bytes are a PROXY header of its own
OWN_HEADER = ("refuse", "pass")
#: client_to_server's answer for a packet of a refused connection (drop it)
REFUSED = "refused"

_SYN, _FIN, _ACK = 0x02, 0x01, 0x10
_L = struct.Struct("!L")
_H = struct.Struct("!H")
_OPT_EOL, _OPT_NOP, _OPT_MSS, _OPT_SACK = 0, 1, 2, 5


#: what a client segment did (director.client_address.Event), by what changed
_SENT = Event(("proxy_headers",))
_RESENT = Event(("proxy_headers_resent",))
_PASSED = Event(("proxy_headers_passed",))
_REFUSED_NOW = Event(("proxy_headers_refused",), "proxy_refused")
_REFUSED_AGAIN = Event((), "proxy_refused")
_BAD_CHECKSUM = Event((), "bad_checksum")


class StreamHeader(SeqAdj):
    """A TCP connection's PROXY header and shift, as director.client_address.State."""

    __slots__ = ()

    def client_to_server(self, data: bytes, pkt, handshake: bool):
        sent, refused, delta_ = self.inserted, self.refused, self.delta
        shifted = client_to_server(self, data, pkt)
        if shifted is None:
            return None, pkt, _BAD_CHECKSUM
        if shifted is REFUSED:
            return None, pkt, _REFUSED_NOW if self.refused != refused else _REFUSED_AGAIN
        if self.inserted != sent:
            event = _SENT if sent == 0 else _RESENT
        elif self.delta != delta_:
            event = _PASSED
        else:
            event = None
        return shifted[0], shifted[1], event

    def server_to_client(self, data: bytes, pkt) -> bytes:
        return server_to_client(self, data, pkt)

    def quoted_shifts(self, data: bytes, inner) -> tuple[int, int]:
        return quoted_seq_shift(self, data, inner), 0

    def sync_options(self) -> dict:
        return seq_options(self.sync_option())

    def take_sync(self, name: str, option) -> bool:
        """The peer's shift for the same insertion point keeps our counts; it only
        teaches that the header went out (an insertion point moves only with a new
        connection, which replaced ours)."""
        if name != OPT_SEQ or self.state() != tuple(option[:3]):
            return False
        if option[3] and not self.decided:
            self.inserted = 1
        self.announced = self.announced or bool(option[3])
        self.refused = self.refused or option[5]
        return True


def begin(mode: str, data: bytes, pkt, own_header: str = "refuse") -> StreamHeader | None:
    """The state for a new connection opened by this client SYN (None: the mode writes
    no header, or the packet is no SYN).  `own_header` (OWN_HEADER): what to do if the
    client's first bytes are a PROXY header of its own."""
    version = MODES.get(mode)
    if version is None or pkt.proto != TCP or not pkt.flags & _SYN or pkt.flags & _ACK:
        return None
    isn = _L.unpack_from(data, pkt.l4 + 4)[0]
    header = proxy.encode(version, pkt.src, pkt.dst, pkt.sport, pkt.dport)
    adj = StreamHeader(isn + 1, header)
    adj.own_passes = own_header == "pass"
    return adj


def _own_header(payload: bytes) -> bool:
    """The segment opens with a PROXY header of the client's own (either version; a
    header split before its first 6 or 12 bytes is not recognised)."""
    return payload[:6] == b"PROXY " or payload[:12] == proxy.SIGNATURE


def resume(option: tuple, caddr: bytes, cport: int, vaddr: bytes, vport: int) -> StreamHeader | None:
    """The shift of a connection learned from the peer (the sync entry option "seq":
    init_seq, delta, previous_delta, sent, version): the same header written again, so a
    retransmitted first segment gets exactly what the peer put in the stream.  None when
    the header we would write is not the length the peer's shift says (not the same
    header: shifting by it would corrupt the stream)."""
    init_seq, delta_, previous_delta, sent, version, refused = option
    if delta_ == previous_delta:                    # the client's own header passed
        header = b""
    else:
        header = proxy.encode(version, caddr, vaddr, cport, vport)
        if len(header) != delta_ - previous_delta:
            return None
    adj = StreamHeader(init_seq, header, previous_delta)
    adj.refused = refused
    if sent:
        adj.inserted = 1 if header else 0
        adj.announced = True
    return adj


def client_to_server(adj: SeqAdj, data: bytes, pkt):
    """(data, pkt) of a client->server packet in the server's sequence space; None to
    drop it (the segment that must carry the header arrived with a bad checksum:
    recomputing it would pass the corruption on as good data); REFUSED to drop it because
    the client sent a PROXY header of its own and the service refuses that (the segment
    that shows it, and every client packet of the connection after it)."""
    if adj.refused:
        return REFUSED
    l4 = pkt.l4
    doff = (data[l4 + 12] >> 4) * 4
    plen = pkt.end - l4 - doff
    flags = pkt.flags
    seq = _L.unpack_from(data, l4 + 4)[0]
    new_seq, prefix = adj.client_segment(seq, bool(flags & _SYN), bool(flags & _FIN), plen)
    if prefix:
        if not P.l4_checksum_ok(data, pkt):
            return None
        if _own_header(data[l4 + doff:pkt.end]):
            if not adj.own_passes:
                adj.refused = True
                return REFUSED
            adj.pass_through()      # never two headers: theirs goes, ours is not written
            return data, pkt
        adj.inserted += 1
        return _insert(data, pkt, l4 + doff, prefix, new_seq)
    if new_seq == seq:
        return data, pkt
    co = l4 + 16
    c = _swap32(data[co] << 8 | data[co + 1], seq, new_seq)
    return b"".join((data[:l4 + 4], _L.pack(new_seq), data[l4 + 8:co], _H.pack(c), data[co + 2:])), pkt


def _swap32(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn 3 for one 32-bit field: HC' = ~(~HC + ~m + m'), as two 16-bit words."""
    s = ((~csum & 0xFFFF) + (~old >> 16 & 0xFFFF) + (~old & 0xFFFF)
         + (new >> 16) + (new & 0xFFFF))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _insert(data: bytes, pkt, payload_at: int, prefix: bytes, new_seq: int):
    """The packet with prefix in front of its payload: lengths and checksums redone."""
    l4 = pkt.l4
    out = bytearray(data[:payload_at])
    out += prefix
    out += data[payload_at:pkt.end]
    _L.pack_into(out, l4 + 4, new_seq)
    seg_len = len(out) - l4
    if pkt.family == 4:
        _H.pack_into(out, 2, len(out))
        out[10:12] = b"\0\0"
        _H.pack_into(out, 10, checksum(out[:(out[0] & 0xF) * 4]))
    else:
        _H.pack_into(out, 4, len(out) - 40)
    out[l4 + 16:l4 + 18] = b"\0\0"
    s = ones_sum(out[l4:]) + pseudo_header_sum(pkt.src, pkt.dst, TCP, seg_len)
    _H.pack_into(out, l4 + 16, ~fold(s) & 0xFFFF)
    new = bytes(out)
    return new, P.parse(new)


def server_to_client(adj: SeqAdj, data: bytes, pkt) -> bytes:
    """A server->client packet in the client's sequence space (same length)."""
    l4 = pkt.l4
    flags = pkt.flags
    doff = (data[l4 + 12] >> 4) * 4
    # only a SYN's MSS or a SACK block changes among the options: skip the walk when no
    # byte of them could start one (timestamps alone, the usual case)
    walk = doff > 20 and (flags & _SYN or data.find(b"\x05", l4 + 20, l4 + doff) >= 0)
    if not walk:
        if not flags & _ACK:
            return data
        ack = _L.unpack_from(data, l4 + 8)[0]
        new_ack = adj.ack_out(ack)
        if new_ack == ack:
            return data
        co = l4 + 16
        c = _swap32(data[co] << 8 | data[co + 1], ack, new_ack)
        return b"".join((data[:l4 + 8], _L.pack(new_ack), data[l4 + 12:co], _H.pack(c),
                         data[co + 2:]))
    out = bytearray(data)
    if flags & _ACK:
        _L.pack_into(out, l4 + 8, adj.ack_out(_L.unpack_from(data, l4 + 8)[0]))
    _options(adj, out, l4 + 20, l4 + doff, flags & _SYN)
    # ack and options are 4-aligned in the segment and the options end 4-aligned:
    # one delta over both covers every changed word
    old = data[l4 + 8:l4 + 12] + data[l4 + 20:l4 + doff]
    new = bytes(out[l4 + 8:l4 + 12] + out[l4 + 20:l4 + doff])
    if old != new:
        co = l4 + 16
        _H.pack_into(out, co, update(data[co] << 8 | data[co + 1], delta(old, new)))
        return bytes(out)
    return data


def _options(adj: SeqAdj, out: bytearray, i: int, end: int, syn: int) -> None:
    """Shift SACK edges back; on a SYN-ACK lower the MSS by the header's length."""
    while i < end:
        kind = out[i]
        if kind == _OPT_EOL:
            return
        if kind == _OPT_NOP:
            i += 1
            continue
        if i + 1 >= end or out[i + 1] < 2 or i + out[i + 1] > end:
            return      # a broken option list: leave the rest as it came
        size = out[i + 1]
        if kind == _OPT_SACK and (size - 2) % 8 == 0:
            for e in range(i + 2, i + size, 4):
                _L.pack_into(out, e, adj.ack_out(_L.unpack_from(out, e)[0]))
        elif kind == _OPT_MSS and size == 4 and syn:
            mss = _H.unpack_from(out, i + 2)[0]
            _H.pack_into(out, i + 2, max(mss - adj.delta, 64))
        i += size


def quoted_seq_shift(adj: SeqAdj, data: bytes, inner) -> int:
    """What to add (mod 2**32) to the sequence number an ICMP error quotes from a
    client->server segment, to give it back in the client's space (a segment that
    carried the header keeps init_seq; 0 when the quote is too short to hold it)."""
    if inner.proto != TCP or inner.l4 + 8 > inner.end:
        return 0
    seq = _L.unpack_from(data, inner.l4 + 4)[0]
    return (adj.ack_out(seq) - seq) & 0xFFFFFFFF
