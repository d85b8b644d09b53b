"""ICMP and ICMPv6 errors the director originates itself.

`port_unreachable` builds what the kernel's icmp_send / icmpv6_send would send
for a packet the director refuses (ip_vs_leave): Destination Unreachable, code
"port unreachable", from the packet's destination back to its source, quoting
as much of the refused packet as fits in 576 bytes (IPv4, RFC 1812 4.3.2.3)
or 1280 bytes (IPv6, RFC 4443 2.4(c)).
"""
from __future__ import annotations

import struct

from proto.checksum import checksum, fold, ones_sum, pseudo_header_sum
from proto.consts import ICMP, ICMPV6
from proto.packet import Packet

__all__ = ["port_unreachable", "may_answer"]

#: the largest error message, IP header included
MAX_ERROR_V4 = 576
MAX_ERROR_V6 = 1280
TTL = 64

ICMP_DEST_UNREACH, ICMP_PORT_UNREACH = 3, 3
ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH = 1, 4

_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")


def may_answer(pkt: Packet) -> bool:
    """RFC 1122 3.2.2 / RFC 4443 2.4(e): never answer a packet from an
    unspecified, multicast or broadcast source (icmp_send checks the same)."""
    src = bytes(pkt.src)
    if not any(src):
        return False
    if pkt.family == 4:
        return src[0] < 224 and src != b"\xff\xff\xff\xff"
    return src[0] != 0xFF


def port_unreachable(buf: bytes, pkt: Packet) -> bytes:
    """The error answering the packet in buf (parsed as pkt)."""
    quote = bytes(buf[:pkt.end])
    if pkt.family == 4:
        quote = quote[:MAX_ERROR_V4 - 20 - 8]
        icmp = bytearray(struct.pack("!BBHI", ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0, 0) + quote)
        struct.pack_into("!H", icmp, 2, checksum(icmp))
        total = 20 + len(icmp)
        hdr = bytearray(_IP4.pack(0x45, 0, total, 0, 0, TTL, ICMP, 0, bytes(pkt.dst), bytes(pkt.src)))
        struct.pack_into("!H", hdr, 10, checksum(hdr))
        return bytes(hdr + icmp)
    quote = quote[:MAX_ERROR_V6 - 40 - 8]
    icmp6 = bytearray(struct.pack("!BBHI", ICMPV6_DEST_UNREACH, ICMPV6_PORT_UNREACH, 0, 0) + quote)
    s = ones_sum(icmp6) + pseudo_header_sum(bytes(pkt.dst), bytes(pkt.src), ICMPV6, len(icmp6))
    struct.pack_into("!H", icmp6, 2, ~fold(s) & 0xFFFF)
    hdr6 = _IP6.pack(6 << 28, len(icmp6), ICMPV6, TTL, bytes(pkt.dst), bytes(pkt.src))
    return hdr6 + bytes(icmp6)
