"""Unsolicited neighbour advertisements (RFC 4861 §4.4, §7.2.6): IPv6's gratuitous ARP.

When a director takes over an IPv6 address (a VIP or a laddr) the hosts and routers on the link
still map it to the other director's MAC.  One neighbour advertisement to all nodes (ff02::1)
with the Override flag set makes every node that has the address cached replace the link-layer
address at once (RFC 4861 §7.2.5: O=1 updates the entry and sets it STALE, so the next packet
goes to the new MAC after a quick reachability probe).  Nodes that have no entry ignore it; nothing
is created.

The frame (Ethernet + IPv6 + ICMPv6, 86 bytes), built here because it is small and fixed:

    Ethernet   dst 33:33:00:00:00:01 (ff02::1), src = the interface MAC, type 0x86dd
    IPv6       src = the address itself (as Linux's own unsolicited NA), dst ff02::1,
               hop limit 255 (receivers drop any other, RFC 4861 §7.1.2), next header 58
    ICMPv6     type 136, code 0, checksum over the IPv6 pseudo-header,
               flags: Override set, Solicited clear (it answers no solicitation; a receiver
               drops a multicast NA with S set), Router clear by default (a service address is
               not a router: R set would make hosts treat it as one, RFC 4861 §7.2.5),
               target = the address,
               option 2 (target link-layer address, length 1 = 8 bytes) = the interface MAC
"""
from __future__ import annotations

import ipaddress
import struct

from proto.checksum import fold, ones_sum, pseudo_header_sum

__all__ = ["ETH_P_IPV6", "ALL_NODES", "na_frame", "NA_ROUTER", "NA_SOLICITED", "NA_OVERRIDE"]

ETH_P_IPV6 = 0x86DD
ALL_NODES = "ff02::1"
_ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
_ALL_NODES = ipaddress.IPv6Address(ALL_NODES).packed
IPPROTO_ICMPV6 = 58
ND_NEIGHBOR_ADVERT = 136
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80, 0x40, 0x20
OPT_TARGET_LLADDR = 2
HOP_LIMIT = 255
_NA_LEN = 4 + 4 + 16 + 8        # type/code/checksum, flags, target, the option


def na_frame(mac: bytes, address: str, router: bool = False) -> bytes:
    """An unsolicited neighbour advertisement of `address` at `mac`, to all nodes (see the
    module docstring).  ValueError for a MAC that is not 6 bytes or an address that is not a
    unicast IPv6 address."""
    if len(mac) != 6:
        raise ValueError("a MAC is 6 bytes")
    target = ipaddress.IPv6Address(address)
    if target.is_multicast or target.is_unspecified:
        raise ValueError(f"{address} is not a unicast address (a neighbour advertisement's target)")
    if target.scope_id:
        target = ipaddress.IPv6Address(target.packed)
    src = target.packed
    flags = NA_OVERRIDE | (NA_ROUTER if router else 0)
    icmp = bytearray(struct.pack("!BBHB3x", ND_NEIGHBOR_ADVERT, 0, 0, flags))
    icmp += src + struct.pack("!BB", OPT_TARGET_LLADDR, 1) + mac
    s = fold(ones_sum(icmp) + pseudo_header_sum(src, _ALL_NODES, IPPROTO_ICMPV6, _NA_LEN))
    struct.pack_into("!H", icmp, 2, ~s & 0xFFFF)
    ip6 = struct.pack("!IHBB", 6 << 28, _NA_LEN, IPPROTO_ICMPV6, HOP_LIMIT) + src + _ALL_NODES
    eth = _ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6)
    return eth + ip6 + bytes(icmp)
