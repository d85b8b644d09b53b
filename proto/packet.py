"""IPv4/IPv6 + TCP/UDP/ICMP/ICMPv6 header parsing for the NFQUEUE data plane.

parse() is called once per queued packet, so it works on the raw payload with
struct.unpack_from and slices and allocates nothing but the Packet, its
address/key bytes and, for ICMP errors, the embedded Packet.

Buffers are expected to be `bytes` (what NFQUEUE hands over); a bytearray
parses too, but then src/dst are bytearrays and cannot be dict keys (key is
always bytes).

Reason codes (Malformed.reason) and what they mean here:

  truncated          the buffer ends before the packet it describes does: shorter
                     than a fixed IP header, than the IPv4 total length or the
                     IPv6 payload length (e.g. an NFQUEUE copy range that is too
                     small), or an ICMP error quotes too little of its packet
  bad_version        IP version neither 4 nor 6 (or, in an ICMP error, not the
                     version of the outer packet)
  bad_ihl            IPv4 IHL < 5
  bad_total_length   IPv4 total length < IHL*4
  fragment           an IP fragment, first or not.  The kernel reassembles before
                     the queue (director/rules.py), so one reaching parse() means
                     reassembly is off; a first fragment alone is half a datagram,
                     a later one has no ports.  (An ICMP error may still quote a
                     first fragment: that is the packet the error is about.)
  bad_l4_header      TCP/UDP/ICMP header does not fit in the IP payload or has
                     an impossible length field
  unsupported_proto  L4 protocol other than TCP, UDP, ICMP (IPv4), ICMPv6 (IPv6),
                     an unknown IPv6 extension header, a routing header with
                     segments left, or an ICMP error quoting something other
                     than TCP/UDP
  bad_ext_header     IPv6 extension header chain runs past the payload, is too
                     long, or has hop-by-hop options anywhere but first
"""
from __future__ import annotations

import struct

from proto.checksum import ones_sum, pseudo_header_sum
from proto.consts import ICMP, ICMPV6, TCP, UDP

__all__ = [
    "TRUNCATED", "BAD_VERSION", "BAD_IHL", "BAD_TOTAL_LENGTH", "FRAGMENT",
    "BAD_L4_HEADER", "UNSUPPORTED_PROTO", "BAD_EXT_HEADER", "REASONS",
    "Malformed", "Packet", "flow_key", "parse", "ipv4_header_ok", "l4_checksum_ok",
]

TRUNCATED = "truncated"
BAD_VERSION = "bad_version"
BAD_IHL = "bad_ihl"
BAD_TOTAL_LENGTH = "bad_total_length"
FRAGMENT = "fragment"
BAD_L4_HEADER = "bad_l4_header"
UNSUPPORTED_PROTO = "unsupported_proto"
BAD_EXT_HEADER = "bad_ext_header"
REASONS = (TRUNCATED, BAD_VERSION, BAD_IHL, BAD_TOTAL_LENGTH, FRAGMENT,
           BAD_L4_HEADER, UNSUPPORTED_PROTO, BAD_EXT_HEADER)

# Only the errors IPVS treats as related to a connection: for IPv4
# (ip_vs_in_icmp) not redirects or parameter problems; for IPv6
# (ip_vs_in_icmp_v6) every error type, i.e. everything below 128 that RFC 4443
# defines.  A parameter problem's pointer is an offset into the quoted packet,
# which FULLNAT does not move, so it is translated like the others.
ICMP4_ERRORS = frozenset((3, 4, 11))     # dest unreachable (incl. frag needed), source quench, time exceeded
ICMP6_ERRORS = frozenset((1, 2, 3, 4))   # dest unreachable, packet too big, time exceeded, parameter problem

# A chain longer than this is an attack or a bug, not traffic worth balancing.
MAX_EXT_HEADERS = 8

_IP4 = struct.Struct("!BxHxxHxB")        # ver/ihl, total length, flags/frag offset, protocol
_HH = struct.Struct("!HH")
_HHH = struct.Struct("!HHH")
_NO_PORTS = b"\0\0\0\0"
_PROTO_BYTE = [bytes((i,)) for i in range(256)]


class Malformed(Exception):
    """A packet the data plane cannot handle; .reason is one of REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Packet:
    """Parsed header fields of one packet; offsets index the buffer given to parse().

    off    offset of the IP header (0, or inside the ICMP payload for `inner`)
    l4     offset of the L4 header
    end    end of the packet: IPv4 total length / 40 + IPv6 payload length from off;
           for `inner`, capped at the end of the quoting ICMP message
    sport/dport  0 for ICMP; flags is the TCP flags byte (0 otherwise, or when an
    ICMP error quotes fewer than 14 bytes of TCP); icmp_type/icmp_code -1 unless ICMP.
    """

    __slots__ = ("family", "proto", "off", "l4", "end", "src", "dst", "sport", "dport",
                 "flags", "icmp_type", "icmp_code", "inner", "key")

    def __init__(self, family, proto, off, l4, end, src, dst, sport, dport,
                 flags, icmp_type, icmp_code, inner, key):
        self.family = family
        self.proto = proto
        self.off = off
        self.l4 = l4
        self.end = end
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.flags = flags
        self.icmp_type = icmp_type
        self.icmp_code = icmp_code
        self.inner = inner
        self.key = key

    def __repr__(self) -> str:
        import ipaddress
        s = ipaddress.ip_address(bytes(self.src))
        d = ipaddress.ip_address(bytes(self.dst))
        extra = f" icmp={self.icmp_type}/{self.icmp_code}" if self.icmp_type >= 0 else f" flags={self.flags:#04x}"
        inner = f" inner={self.inner!r}" if self.inner is not None else ""
        return (f"<Packet v{self.family} proto={self.proto} {s}:{self.sport} -> {d}:{self.dport}"
                f"{extra} off={self.off} l4={self.l4} end={self.end}{inner}>")


def flow_key(proto: int, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    """The connection-table key, byte-identical to Packet.key for the same 5-tuple."""
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise ValueError("flow_key needs two 4-byte or two 16-byte packed addresses")
    return _PROTO_BYTE[proto] + bytes(src) + bytes(dst) + _HH.pack(sport, dport)


def _walk6(buf, off: int, nh: int, limit: int):
    """Skip IPv6 extension headers from off.

    Returns (l4 offset, upper-layer protocol, more-fragments flag of a first fragment).
    """
    first = off
    mf = False
    for _ in range(MAX_EXT_HEADERS):
        if nh == TCP or nh == UDP or nh == ICMPV6:
            return off, nh, mf
        if nh != 0 and nh != 43 and nh != 44 and nh != 60:
            raise Malformed(UNSUPPORTED_PROTO)      # AH, ESP, No Next Header, mobility, ...
        if off + 8 > limit:
            raise Malformed(BAD_EXT_HEADER)
        if nh == 44:
            # Fragment header: only the first fragment carries the L4 header.
            if (buf[off + 2] << 8 | buf[off + 3]) & 0xFFF8:
                raise Malformed(FRAGMENT)
            mf = bool(buf[off + 3] & 1)
            nh = buf[off]
            off += 8
            continue
        if nh == 0 and off != first:
            raise Malformed(BAD_EXT_HEADER)   # RFC 8200 4.1: hop-by-hop only right after the IPv6 header
        if nh == 43 and buf[off + 3]:
            # Segments left: the L4 pseudo-header uses the final destination
            # (RFC 8200 8.1), not the header's, so a dst rewrite would break it.
            raise Malformed(UNSUPPORTED_PROTO)
        nxt = off + ((buf[off + 1] + 1) << 3)
        if nxt > limit:
            raise Malformed(BAD_EXT_HEADER)
        nh = buf[off]
        off = nxt
    if nh == TCP or nh == UDP or nh == ICMPV6:
        return off, nh, mf
    raise Malformed(BAD_EXT_HEADER)


def parse(buf: bytes) -> Packet:
    """Parse one IP packet; raises Malformed (and nothing else) for anything unusable."""
    n = len(buf)
    if not n:
        raise Malformed(TRUNCATED)
    v = buf[0] >> 4
    if v == 4:
        if n < 20:
            raise Malformed(TRUNCATED)
        vihl, end, frag, proto = _IP4.unpack_from(buf)
        l4 = (vihl & 15) << 2
        if l4 < 20:
            raise Malformed(BAD_IHL)
        if end < l4:
            raise Malformed(BAD_TOTAL_LENGTH)
        if end > n:
            raise Malformed(TRUNCATED)
        if frag & 0x3FFF:            # more fragments (MF), or an offset
            raise Malformed(FRAGMENT)
        if proto != TCP and proto != UDP and proto != ICMP:
            raise Malformed(UNSUPPORTED_PROTO)
        src = buf[12:16]
        dst = buf[16:20]
        addrs = buf[12:20]
    elif v == 6:
        if n < 40:
            raise Malformed(TRUNCATED)
        end = 40 + (buf[4] << 8 | buf[5])
        if end > n:
            raise Malformed(TRUNCATED)
        proto = buf[6]
        l4 = 40
        if proto != TCP and proto != UDP and proto != ICMPV6:
            l4, proto, first_frag = _walk6(buf, 40, proto, end)
            if first_frag:
                raise Malformed(FRAGMENT)
        src = buf[8:24]
        dst = buf[24:40]
        addrs = buf[8:40]
    else:
        raise Malformed(BAD_VERSION)

    room = end - l4
    if proto == TCP:
        if room < 20:
            raise Malformed(BAD_L4_HEADER)
        doff = buf[l4 + 12] >> 4
        if doff < 5 or (doff << 2) > room:
            raise Malformed(BAD_L4_HEADER)
        sport, dport = _HH.unpack_from(buf, l4)
        return Packet(v, TCP, 0, l4, end, src, dst, sport, dport, buf[l4 + 13], -1, -1, None,
                      _PROTO_BYTE[TCP] + addrs + buf[l4:l4 + 4])
    if proto == UDP:
        if room < 8:
            raise Malformed(BAD_L4_HEADER)
        sport, dport, ulen = _HHH.unpack_from(buf, l4)
        if ulen < 8 or ulen > room:
            raise Malformed(BAD_L4_HEADER)
        return Packet(v, UDP, 0, l4, end, src, dst, sport, dport, 0, -1, -1, None,
                      _PROTO_BYTE[UDP] + addrs + buf[l4:l4 + 4])
    # ICMP / ICMPv6 (the protocol/family pairing was checked above)
    if room < 8:
        raise Malformed(BAD_L4_HEADER)
    t = buf[l4]
    inner = None
    if t in (ICMP4_ERRORS if v == 4 else ICMP6_ERRORS):
        inner = _embedded(buf, v, l4 + 8, end)
    return Packet(v, proto, 0, l4, end, src, dst, 0, 0, 0, t, buf[l4 + 1], inner,
                  _PROTO_BYTE[proto] + addrs + _NO_PORTS)


def _embedded(buf, family: int, off: int, limit: int) -> Packet:
    """The packet quoted by an ICMP error, at off; limit is the end of the ICMP message.

    The quote is a prefix: its IP length fields may claim more than is present.
    What must be present is the whole IP header and 8 bytes of TCP/UDP (the ports).
    """
    if off >= limit:
        raise Malformed(TRUNCATED)
    if buf[off] >> 4 != family:
        raise Malformed(BAD_VERSION)
    if family == 4:
        if off + 20 > limit:
            raise Malformed(TRUNCATED)
        vihl, tot, frag, proto = _IP4.unpack_from(buf, off)
        hl = (vihl & 15) << 2
        if hl < 20:
            raise Malformed(BAD_IHL)
        if tot < hl:
            raise Malformed(BAD_TOTAL_LENGTH)
        if frag & 0x1FFF:
            raise Malformed(FRAGMENT)
        l4 = off + hl
        end = off + tot
        src = buf[off + 12:off + 16]
        dst = buf[off + 16:off + 20]
        addrs = buf[off + 12:off + 20]
    else:
        if off + 40 > limit:
            raise Malformed(TRUNCATED)
        end = off + 40 + (buf[off + 4] << 8 | buf[off + 5])
        proto = buf[off + 6]
        l4 = off + 40
        if proto != TCP and proto != UDP and proto != ICMPV6:
            l4, proto, _ = _walk6(buf, l4, proto, min(end, limit))
        src = buf[off + 8:off + 24]
        dst = buf[off + 24:off + 40]
        addrs = buf[off + 8:off + 40]
    if proto != TCP and proto != UDP:
        raise Malformed(UNSUPPORTED_PROTO)
    if l4 + 8 > end:
        raise Malformed(BAD_L4_HEADER)     # the original packet itself had no room for ports
    if end > limit:
        end = limit
    if l4 + 8 > end:
        raise Malformed(TRUNCATED)
    sport, dport = _HH.unpack_from(buf, l4)
    flags = buf[l4 + 13] if proto == TCP and l4 + 14 <= end else 0
    return Packet(family, proto, off, l4, end, src, dst, sport, dport, flags, -1, -1, None,
                  _PROTO_BYTE[proto] + addrs + buf[l4:l4 + 4])


def ipv4_header_ok(buf: bytes) -> bool:
    """True if buf starts with an IPv4 header whose checksum is right."""
    if len(buf) < 20 or buf[0] >> 4 != 4:
        return False
    hl = (buf[0] & 15) << 2
    if hl < 20 or hl > len(buf):
        return False
    return ones_sum(memoryview(buf)[:hl]) == 0xFFFF


def l4_checksum_ok(buf: bytes, pkt: Packet) -> bool:
    """Verify the TCP/UDP/ICMP/ICMPv6 checksum of an outer packet (not meaningful for pkt.inner).

    An IPv4 UDP checksum of 0 means "not computed" and passes; over IPv6 it
    fails (RFC 8200 8.1).  A first fragment fails: its checksum covers the
    whole datagram.
    """
    l4 = pkt.l4
    end = pkt.end
    proto = pkt.proto
    if proto == UDP:
        if not (buf[l4 + 6] or buf[l4 + 7]):
            return pkt.family == 4
        ulen = buf[l4 + 4] << 8 | buf[l4 + 5]
        if l4 + ulen > end:
            return False
        end = l4 + ulen
    s = ones_sum(memoryview(buf)[l4:end])
    if proto != ICMP:
        s += pseudo_header_sum(pkt.src, pkt.dst, proto, end - l4)
    # Valid iff the total is "-0": non-zero and congruent to 0 mod 0xffff.
    return s != 0 and s % 0xFFFF == 0
