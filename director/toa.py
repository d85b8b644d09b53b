"""The client's address for real servers: TOA, a TCP option naming the client.

The packet half of `client_address = "toa"` (engine forwarding), for real servers
that load a TOA kernel module (DPVS's kmod/toa, Alibaba's FULLNAT toa.ko).  Such a
module reads the option from the segment that completes the handshake at the real
server (it hooks the creation of the accepted socket) and from then on answers
getpeername() with the client's address and port.  The option (kind 254, as DPVS
and the Alibaba FULLNAT kernel write it; port and address in network order):

    IPv4: | 254 | 8  | client port (2) | client IPv4 address (4)  |
    IPv6: | 254 | 20 | client port (2) | client IPv6 address (16) |

Where it goes: first in the option list (right after the 20-byte TCP header; the
client's options follow, the data offset grows by 2 or 5 words, the IP length and
both checksums follow) of every client segment, except a SYN or RST, whose
acknowledgement number is the real server's first byte (its SYN-ACK's sequence
number + 1, learnt from the SYN-ACK on its way back).  Those are exactly the
segments that can complete the handshake at the real server: the client's ACK,
and its data segments sent before the server sent a byte of its own, which
complete it when that ACK was lost.  A module reads only the one that completes
it; on any other segment the option is an unknown option the server's TCP skips.
Once the real server sends anything but its SYN-ACK, its socket exists and no
later segment needs the option: the connection drops its TOA state.
A connection this node learnt from its peer and whose SYN-ACK it never saw gets
the option on the client packet that moves it out of SYN_RECV (the handshake's
ACK as far as the director can tell).

Every copy carries the same bytes (the connection's client address and port), so
a segment that carries it twice (retransmitted, or once from each director across a
failover) is never misread.  The real server's SYN-ACK reaches the client with its
MSS option lowered by the option's length, as DPVS does, so a full-size early data
segment plus the option still fits what the server said it can take.

No room (more than 40 - 8 (or 20) bytes of options, data offset 15): as DPVS's
tcp_in_prune_options, the client's NOPs and any option 254 of its own are dropped
and the rest packed; if that is still too much, every option but the timestamps
(the one a segment after the SYN needs) is dropped too (SACK blocks are advisory:
the client sends them again).  A list that cannot be read, or a segment still
without room, goes on unchanged and is counted.  An option 254 the client wrote
itself never reaches the server ahead of ours: ours goes first, and a pruned list
drops the client's.
"""
from __future__ import annotations

import struct

from director.client_address import Event
from proto import packet as P
from proto.checksum import fold, ones_sum, update
from proto.consts import TCP
from proto.sync import OPT_TOA, toa_options

__all__ = ["KIND", "Toa", "begin", "synced", "option", "insert", "client_to_server",
           "server_to_client", "INSERTED", "PRUNED", "NO_ROOM", "DONE"]

#: the TCP option kind of TOA (DPVS's TCP_OPT_ADDR, the TOA modules' TCPOPT_TOA)
KIND = 254
#: what client_to_server did to a segment that should carry the option
INSERTED, PRUNED, NO_ROOM = "inserted", "pruned", "no_room"
#: ...or: the real server has shown it holds the connection's socket (it sent something
#: other than its SYN-ACK), so no later segment can create it: the TOA state can go
DONE = "done"
#: the engine's counts of each (director.client_address.Event)
_EVENTS = {None: None, INSERTED: Event(("toa_inserted",)),
           PRUNED: Event(("toa_inserted", "toa_pruned")),
           NO_ROOM: Event(("toa_no_room",)), DONE: Event(release=True)}

_SYN, _RST, _ACK = 0x02, 0x04, 0x10
_OPT_EOL, _OPT_NOP, _OPT_MSS, _OPT_TS = 0, 1, 2, 8
_MAX_OPTIONS = 40               # data offset 15 words, less the 20-byte header
_H = struct.Struct("!H")
_L = struct.Struct("!L")
_INVERT = bytes(range(255, -1, -1))


def option(caddr: bytes, cport: int) -> bytes:
    """The TOA option naming the client (8 bytes for IPv4, 20 for IPv6)."""
    return bytes((KIND, 4 + len(caddr))) + _H.pack(cport) + bytes(caddr)


class Toa:
    """One connection's TOA state, its client-address state (director.client_address),
    so a plain service pays no extra attribute test per packet.  It shifts no sequence
    number: the ICMP quote's shift is none."""

    __slots__ = ("option", "fdata", "inserted", "done", "announced")

    def __init__(self, caddr: bytes, cport: int) -> None:
        self.option = option(caddr, cport)
        #: the real server's first sequence number (its SYN-ACK's + 1), -1 until seen
        self.fdata = -1
        #: how many segments of this connection got the option
        self.inserted = 0
        #: the real server sent a segment other than a SYN-ACK or RST: its socket exists
        self.done = False
        #: syncd.policy has sent the peer the server's first sequence number
        self.announced = False

    @property
    def decided(self) -> bool:
        """The real server's first sequence number is known: the peer must learn it at
        once (URGENT), so that after a takeover it still writes the option on every
        segment that can complete the server's handshake."""
        return self.fdata >= 0

    def client_to_server(self, data: bytes, pkt, handshake: bool):
        data, pkt, outcome = client_to_server(self, data, pkt, handshake)
        return data, pkt, _EVENTS[outcome]

    def server_to_client(self, data: bytes, pkt) -> bytes:
        return server_to_client(self, data, pkt)

    @staticmethod
    def quoted_shifts(data: bytes, inner) -> tuple[int, int]:
        return 0, 0

    def sync_options(self) -> dict | None:
        """Option "toa" while the option may still be due and the server's first sequence
        number is known (the option itself the peer rebuilds from the entry's address)."""
        return None if self.fdata < 0 or self.done else toa_options(self.fdata)

    def take_sync(self, name: str, value) -> bool:
        """The peer's "toa" option: its view of the server's first sequence number (a
        PROXY shift from the peer replaces TOA state)."""
        if name != OPT_TOA:
            return False
        self.fdata = value
        self.announced = True
        return True


def begin(data: bytes, pkt) -> Toa | None:
    """The state for a new connection opened by this client SYN (None: no TCP SYN)."""
    if pkt.proto != TCP or not pkt.flags & _SYN or pkt.flags & _ACK:
        return None
    return Toa(pkt.src, pkt.sport)


def synced(conn) -> Toa:
    """The state of a connection learnt from the peer (its SYN-ACK not seen here)."""
    return Toa(conn.caddr, conn.cport)


def wants(adj: Toa, data: bytes, pkt, handshake: bool) -> bool:
    """The client segment should carry the option: no SYN or RST, an ACK of the real
    server's first byte; or, when this node never saw the SYN-ACK, the packet that
    ends the handshake in the director's view (`handshake`)."""
    flags = pkt.flags
    if flags & (_SYN | _RST | _ACK) != _ACK:
        return False
    if adj.fdata < 0:
        return handshake
    return _L.unpack_from(data, pkt.l4 + 8)[0] == adj.fdata


def client_to_server(adj: Toa, data: bytes, pkt, handshake: bool):
    """(data, pkt, outcome) of a client->server segment: outcome None (not one that
    carries the option), INSERTED, PRUNED (inserted after dropping options of the
    client's), NO_ROOM (forwarded unchanged) or DONE (forwarded unchanged, and the
    connection can drop its TOA state)."""
    if adj.done:
        return data, pkt, DONE
    if not wants(adj, data, pkt, handshake):
        return data, pkt, None
    out = insert(data, pkt, adj.option)
    if out is None:
        return data, pkt, NO_ROOM
    adj.inserted += 1
    new, pruned = out
    return new, P.parse(new), PRUNED if pruned else INSERTED


def insert(data: bytes, pkt, opt: bytes) -> tuple[bytes, bool] | None:
    """The TCP segment with `opt` first in its option list: (packet, whether options
    of the client's were dropped to make room), or None (no room, or an option list
    that cannot be read).  The TCP checksum is updated, not recomputed, so a segment
    that came with a wrong checksum leaves with a wrong one (the server drops it and
    the client sends it again) rather than with a good checksum over bad data."""
    l4, end = pkt.l4, pkt.end
    doff = (data[l4 + 12] >> 4) * 4
    if doff < 20 or l4 + doff > end:
        return None
    opts = data[l4 + 20:l4 + doff]
    items = _walk(opts)
    kept = opts
    if len(opts) + len(opt) > _MAX_OPTIONS or (items is not None and KIND in (o[0] for o in items)):
        pruned = _pruned(items, _MAX_OPTIONS - len(opt))
        if pruned is None:
            return None
        kept = pruned
    words = (20 + len(opt) + len(kept)) // 4
    offset = bytes(((words << 4) | (data[l4 + 12] & 0x0F), data[l4 + 13]))
    old_len, new_len = end - l4, end - l4 + len(opt) + len(kept) - len(opts)
    # the changed words: data offset, options, the pseudo-header's length.  Both
    # option lists start at byte 20 and end 4-aligned, so the payload keeps its word
    # alignment and adds the same to both sums
    old = data[l4 + 12:l4 + 14] + opts + _L.pack(old_len)
    new = offset + opt + kept + _L.pack(new_len)
    d = fold(ones_sum(old.translate(_INVERT)) + ones_sum(new))
    csum = update(data[l4 + 16] << 8 | data[l4 + 17], d)
    head = bytearray(data[:l4 + 12])
    if pkt.family == 4:
        total = l4 + new_len
        ip_csum = update(data[10] << 8 | data[11], fold(ones_sum(data[2:4].translate(_INVERT))
                                                        + total))
        _H.pack_into(head, 2, total)
        _H.pack_into(head, 10, ip_csum)
    else:
        _H.pack_into(head, 4, l4 + new_len - 40)
    out = b"".join((head, offset, data[l4 + 14:l4 + 16], _H.pack(csum), data[l4 + 18:l4 + 20],
                    opt, kept, data[l4 + doff:end]))
    return out, kept != opts


def _walk(opts: bytes) -> list[bytes] | None:
    """The options of a list, each as its bytes (NOPs and the EOL padding left out);
    None when the list cannot be read."""
    items: list[bytes] = []
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == _OPT_EOL:
            break
        if kind == _OPT_NOP:
            i += 1
            continue
        if i + 1 >= n or opts[i + 1] < 2 or i + opts[i + 1] > n:
            return None
        items.append(opts[i:i + opts[i + 1]])
        i += opts[i + 1]
    return items


def _pruned(items: list[bytes] | None, room: int) -> bytes | None:
    """The client's options made to fit in `room` bytes, as DPVS prunes them: without
    NOPs and options 254; then, if still too long, the (first) timestamps only.  Padded with EOL to
    a 4-byte boundary.  None: the list cannot be read, or does not fit even so."""
    if items is None:
        return None
    kept = [o for o in items if o[0] != KIND]
    if sum(map(len, kept)) > room:
        kept = [o for o in kept if o[0] == _OPT_TS][:1]
    out = b"".join(kept)
    out += bytes(-len(out) % 4)
    return out if len(out) <= room else None


def server_to_client(adj: Toa, data: bytes, pkt) -> bytes:
    """A server->client packet: a SYN-ACK teaches the real server's first sequence
    number and has its MSS lowered by the option's length; any other (but a RST) shows
    that the server's socket exists (a server still in SYN_RECV sends only SYN-ACKs), so
    no client segment needs the option any more.  The packet passes otherwise unchanged."""
    l4 = pkt.l4
    flags = pkt.flags
    if flags & (_SYN | _ACK | _RST) != _SYN | _ACK:
        if flags & (_SYN | _ACK | _RST) == _ACK:
            adj.done = True
        return data
    adj.fdata = (_L.unpack_from(data, l4 + 4)[0] + 1) & 0xFFFFFFFF
    doff = (data[l4 + 12] >> 4) * 4
    i, end = l4 + 20, min(l4 + doff, pkt.end)
    while i < end:
        kind = data[i]
        if kind == _OPT_EOL:
            return data
        if kind == _OPT_NOP:
            i += 1
            continue
        if i + 1 >= end or data[i + 1] < 2 or i + data[i + 1] > end:
            return data
        if kind == _OPT_MSS and data[i + 1] == 4:
            return _lower_mss(data, l4, i + 2, len(adj.option))
        i += data[i + 1]
    return data


def _lower_mss(data: bytes, l4: int, at: int, by: int) -> bytes:
    """The segment with the MSS value at `at` lowered by `by` (never below 64).  The
    checksum moves by the words the value's two bytes fall in (one, or two when NOP
    padding left it at an odd offset)."""
    mss = _H.unpack_from(data, at)[0]
    new = max(mss - by, 64)
    if new == mss:
        return data
    w0 = at - ((at - l4) & 1)
    w1 = at + 2 + ((at - l4) & 1)
    out = bytearray(data)
    _H.pack_into(out, at, new)
    d = fold(ones_sum(data[w0:w1].translate(_INVERT)) + ones_sum(out[w0:w1]))
    _H.pack_into(out, l4 + 16, update(data[l4 + 16] << 8 | data[l4 + 17], d))
    return bytes(out)
