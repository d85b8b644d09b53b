"""The client's address for real servers of a UDP service: a PROXY v2 header on each datagram.

The packet half of `client_address = "proxy-v2"` on a UDP service (engine forwarding).
HAProxy's spec lets a sender of datagrams put a version 2 header (transport DGRAM) in
front of every datagram, since there is no stream to open with one.  Every datagram
from the client to the real server gets the same header, the one the connection's
addresses and ports make (the client as source, the VIP and service port as
destination: 28 bytes over IPv4, 52 over IPv6); replies pass unchanged.

Nothing is synced for it: the header follows from the connection's own addresses,
so a node that learns the connection from its peer writes the same one
(director.sync_apply attaches it from the service, as `begin` does here).

The datagram grows, so its lengths and checksums are redone; the UDP checksum is
updated, never recomputed, so a datagram that arrived with a bad checksum leaves with
a bad one (the real server's stack drops it, as it would have without the header),
and an IPv4 datagram sent without a checksum (0) keeps none.  A datagram that
cannot grow by the header (its IP length would pass 65,535) is dropped and counted
(`proxy_dgram_too_big`): a datagram cut short or sent without the header would be
taken as the client's.  An ICMP "too big" from the back segment about a datagram that
carried the header reaches the client with the MTU lowered by the header's length
(`mtu_shift`), so the client's next datagrams leave room for it.

The object is the connection's client-address state (director.client_address),
where the TCP half keeps its StreamHeader: a plain connection still pays one
attribute test per packet.  Nothing to announce to the peer, no sequence shift.
"""
from __future__ import annotations

import struct

from director.client_address import Event
from proto import packet as P
from proto import proxy
from proto.checksum import ones_sum, update
from proto.consts import UDP

__all__ = ["MODES", "DgramProxy", "begin", "for_conn", "client_to_server", "mtu_shift", "MAX_IP_LEN"]

#: the modes of `client_address` a UDP service may have (the spec's DGRAM is v2 only)
MODES = {"proxy-v2": 2}
#: the largest IP length field (IPv4 total length, IPv6 payload length; no jumbograms)
MAX_IP_LEN = 0xFFFF

_H = struct.Struct("!H")


class DgramProxy:
    """One UDP connection's PROXY v2 header and what putting it in front of a datagram
    adds to the UDP checksum (the header's words, and its length twice: in the UDP
    length field and in the pseudo-header)."""

    __slots__ = ("header", "csum_add", "own_passes")

    #: the sync policy's (director.client_address.State): a datagram header has
    #: nothing the peer must be told at once
    decided = False
    announced = True

    def __init__(self, header: bytes, own_passes: bool = False) -> None:
        self.header = header
        n = len(header)
        self.csum_add = ones_sum(header + _H.pack(n) + _H.pack(n))
        #: a datagram that opens with a PROXY v2 signature of the client's own goes
        #: through as it came (else it is dropped): never two headers
        self.own_passes = own_passes

    def client_to_server(self, data: bytes, pkt, handshake: bool):
        out, counter = client_to_server(self, data, pkt)
        if out is None:
            return None, pkt, _EVENTS[counter]
        return out[0], out[1], _EVENTS[counter]

    @staticmethod
    def server_to_client(data: bytes, pkt) -> bytes:
        """Replies pass unchanged."""
        return data

    def quoted_shifts(self, data: bytes, inner) -> tuple[int, int]:
        return 0, mtu_shift(self)

    @staticmethod
    def sync_options() -> None:
        """No entry option: the peer writes the same header from the entry's addresses."""
        return None

    @staticmethod
    def take_sync(name: str, value) -> bool:
        return False        # a datagram flow has no stream to shift


def begin(mode: str, pkt, own_header: str = "refuse") -> DgramProxy | None:
    """The header state for a new UDP connection opened by this datagram (None: the mode
    has no datagram form, or the packet is not UDP).  `own_header` ("refuse" | "pass"):
    what to do with a datagram that opens with a PROXY v2 header of the client's own."""
    if mode not in MODES or pkt.proto != UDP:
        return None
    return for_conn(pkt.src, pkt.sport, pkt.dst, pkt.dport, own_header)


def for_conn(caddr: bytes, cport: int, vaddr: bytes, vport: int,
             own_header: str = "refuse") -> DgramProxy:
    """The header state of a connection known by its addresses (a synced one too)."""
    return DgramProxy(proxy.encode_v2(caddr, vaddr, cport, vport, transport="udp"),
                      own_header == "pass")


#: client_to_server's second answer: the counter of what happened (an engine stat when
#: the first answer is a packet, a drop reason when it is None)
SENT, PASSED = "proxy_dgram_headers", "proxy_headers_passed"
TOO_BIG, REFUSED = "proxy_dgram_too_big", "proxy_refused"
_EVENTS = {SENT: Event((SENT,)), PASSED: Event((PASSED,)),
           TOO_BIG: Event((), TOO_BIG), REFUSED: Event((), REFUSED)}


def client_to_server(dp: DgramProxy, data: bytes, pkt):
    """((data, pkt) or None, counter): the client's datagram with the header in front of
    its payload (SENT); as it came, when it opens with a v2 signature of the client's own
    and the service passes those (PASSED); None when the service refuses those (REFUSED)
    or the datagram cannot grow by the header (its IP length would pass MAX_IP_LEN:
    TOO_BIG)."""
    l4, end = pkt.l4, pkt.end
    if data[l4 + 8:l4 + 20] == proxy.SIGNATURE:
        return ((data, pkt), PASSED) if dp.own_passes else (None, REFUSED)
    header = dp.header
    n = len(header)
    if pkt.family == 4:
        ip_len = end - pkt.off
        if ip_len + n > MAX_IP_LEN:
            return None, TOO_BIG
        # the total length word grows by n: so does the header's sum (RFC 1624)
        hc = update(data[10] << 8 | data[11], n)
        ip = b"".join((data[:2], _H.pack(ip_len + n), data[4:10], _H.pack(hc), data[12:l4]))
    else:
        pl = end - pkt.off - 40
        if pl + n > MAX_IP_LEN:
            return None, TOO_BIG
        ip = b"".join((data[:4], _H.pack(pl + n), data[6:l4]))
    udp_len = (data[l4 + 4] << 8 | data[l4 + 5]) + n
    c = data[l4 + 6] << 8 | data[l4 + 7]
    if c:                                       # 0: sent without a checksum, kept so
        c = update(c, dp.csum_add) or 0xFFFF    # a computed 0 goes out as 0xffff (RFC 768)
    out = b"".join((ip, data[l4:l4 + 4], _H.pack(udp_len), _H.pack(c), header, data[l4 + 8:end]))
    # the same packet, n bytes longer: every offset but the end stays
    grown = P.Packet(pkt.family, UDP, pkt.off, l4, end + n, pkt.src, pkt.dst, pkt.sport, pkt.dport,
                     pkt.flags, pkt.icmp_type, pkt.icmp_code, None, pkt.key)
    return (out, grown), SENT


def mtu_shift(dp: DgramProxy) -> int:
    """How much lower the MTU of an ICMP "too big" about one of this connection's datagrams
    must be at the client: the header's length."""
    return len(dp.header)
