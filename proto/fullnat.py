"""FULLNAT packet rewriting: both addresses and both ports, checksums updated in place.

A connection has two directions, and within one direction every packet gets
the same new addresses and ports, so the checksum deltas (RFC 1624 eqn 3) are
per-connection constants: Rewrite computes them once, and apply() costs two
update() calls plus slicing.

Output is built with one b"".join over slices of the input: measured on
CPython 3.11 that is about twice as fast for a 60-byte packet as
bytearray(buf) + slice assignment + bytes(out) (0.38 vs 0.78 us), and no slower
at 1500 bytes, while still copying the payload only once into the result.
"""
from __future__ import annotations

import struct

from proto.checksum import checksum, delta, fold, ones_sum, pseudo_header_sum, update
from proto.packet import ICMP, ICMPV6, TCP, UDP, Packet

__all__ = ["Rewrite", "apply", "rewrite_icmp_error"]

_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_L = struct.Struct("!L")
_M = 0xFFFF


def _check_addrs(family: int, *addrs: bytes) -> None:
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    alen = 4 if family == 4 else 16
    for a in addrs:
        if len(a) != alen:
            raise ValueError(f"IPv{family} address must be {alen} packed bytes, got {len(a)}")


class Rewrite:
    """What apply() writes into every packet of one direction of one connection."""

    __slots__ = ("family", "proto", "addrs", "ports", "ip_delta", "l4_delta")

    def __init__(self, family: int, proto: int,
                 old_src: bytes, old_dst: bytes, old_sport: int, old_dport: int,
                 new_src: bytes, new_dst: bytes, new_sport: int, new_dport: int) -> None:
        _check_addrs(family, old_src, old_dst, new_src, new_dst)
        if proto != TCP and proto != UDP:
            raise ValueError(f"FULLNAT rewrites TCP or UDP, not protocol {proto}")
        self.family = family
        self.proto = proto
        old_addrs = bytes(old_src) + bytes(old_dst)
        old_ports = _HH.pack(old_sport, old_dport)
        # src and dst are adjacent in both IP headers, sport and dport in TCP and UDP.
        self.addrs = bytes(new_src) + bytes(new_dst)
        self.ports = _HH.pack(new_sport, new_dport)
        # IPv4 header checksum covers only the addresses; the L4 checksum covers
        # the addresses through the pseudo-header, and the ports.
        self.ip_delta = delta(old_addrs, self.addrs) if family == 4 else 0
        self.l4_delta = delta(old_addrs + old_ports, self.addrs + self.ports)

    @classmethod
    def pair(cls, family: int, proto: int, caddr: bytes, vaddr: bytes, cport: int, vport: int,
             laddr: bytes, daddr: bytes, lport: int, dport: int) -> tuple["Rewrite", "Rewrite"]:
        """A FULLNAT connection's two rewrites: client->VIP becomes laddr->real server, and
        real server->laddr becomes VIP->client; equal to the two Rewrite(...) calls.

        Built once per new connection, so it is cheaper than two constructors: the
        addresses are checked once, and the reply direction's deltas are the negation of
        the original's (its old words are the original's new ones and the reverse, so the
        two sums add up to a multiple of 0xffff), computed only where that identity is
        not exact (a sum of 0 or 0xffff)."""
        _check_addrs(family, caddr, vaddr, laddr, daddr)
        if proto != TCP and proto != UDP:
            raise ValueError(f"FULLNAT rewrites TCP or UDP, not protocol {proto}")
        new = cls.__new__
        rw_in, rw_out = new(cls), new(cls)
        rw_in.family = rw_out.family = family
        rw_in.proto = rw_out.proto = proto
        rw_in.addrs = in_addrs = bytes(laddr) + bytes(daddr)
        rw_in.ports = in_ports = _HH.pack(lport, dport)
        rw_out.addrs = out_addrs = bytes(vaddr) + bytes(caddr)
        rw_out.ports = out_ports = _HH.pack(vport, cport)
        if family == 4:
            d = delta(out_addrs, in_addrs)
            rw_in.ip_delta = d
            rw_out.ip_delta = _M - d if 0 < d < _M else delta(in_addrs, out_addrs)
        else:
            rw_in.ip_delta = rw_out.ip_delta = 0
        d = delta(out_addrs + out_ports, in_addrs + in_ports)
        rw_in.l4_delta = d
        rw_out.l4_delta = _M - d if 0 < d < _M else delta(in_addrs + in_ports, out_addrs + out_ports)
        return rw_in, rw_out

    @property
    def new_src(self) -> bytes:
        return self.addrs[:len(self.addrs) // 2]

    @property
    def new_dst(self) -> bytes:
        return self.addrs[len(self.addrs) // 2:]

    @property
    def new_sport(self) -> int:
        return _HH.unpack(self.ports)[0]

    @property
    def new_dport(self) -> int:
        return _HH.unpack(self.ports)[1]

    def __repr__(self) -> str:
        import ipaddress
        s = ipaddress.ip_address(self.new_src)
        d = ipaddress.ip_address(self.new_dst)
        return (f"<Rewrite v{self.family} proto={self.proto} -> {s}:{self.new_sport} "
                f"-> {d}:{self.new_dport} ip_delta={self.ip_delta:#06x} l4_delta={self.l4_delta:#06x}>")


def apply(buf: bytes, pkt: Packet, rw: Rewrite) -> bytes:
    """The packet in buf (as parsed into pkt) with rw's addresses and ports; bytes past pkt.end dropped.

    The incoming checksums are updated, not verified: a packet that arrived
    with a bad L4 checksum leaves with a bad one, as through the kernel's NAT.
    """
    proto = pkt.proto
    if proto != rw.proto or pkt.family != rw.family:
        raise ValueError(f"Rewrite for v{rw.family}/{rw.proto} applied to a v{pkt.family}/{proto} packet")
    l4 = pkt.l4
    co = l4 + 16 if proto == TCP else l4 + 6
    c = buf[co] << 8 | buf[co + 1]
    # A zero UDP checksum means "none" (IPv4; IPv6 zero-checksum tunnels, RFC
    # 6935): keep it, like the kernel's udp_manip_pkt.  A computed zero must
    # go out as 0xffff, since 0 would read as "none" (RFC 768).
    if c or proto == TCP:
        c = update(c, rw.l4_delta)
        if not c and proto == UDP:
            c = 0xFFFF
    if pkt.family == 4:
        hc = update(buf[10] << 8 | buf[11], rw.ip_delta)
        return b"".join((buf[:10], _H.pack(hc), rw.addrs, buf[20:l4], rw.ports,
                         buf[l4 + 4:co], _H.pack(c), buf[co + 2:pkt.end]))
    return b"".join((buf[:8], rw.addrs, buf[40:l4], rw.ports,
                     buf[l4 + 4:co], _H.pack(c), buf[co + 2:pkt.end]))


def rewrite_icmp_error(buf: bytes, pkt: Packet,
                       outer_src: bytes, outer_dst: bytes,
                       inner_src: bytes, inner_dst: bytes,
                       inner_sport: int, inner_dport: int,
                       *, inner_seq_delta: int = 0, mtu_delta: int = 0) -> bytes:
    """Translate an ICMP/ICMPv6 error (pkt.inner set) about a FULLNAT flow.

    Outer addresses (IPv4 header checksum recomputed), quoted addresses
    (quoted IPv4 header checksum recomputed) and quoted ports are replaced;
    the quoted TCP/UDP checksum is left alone, since it covers bytes that are
    not quoted (IPVS and DPVS leave it too); the ICMP checksum is recomputed
    over the whole message, for ICMPv6 with the pseudo-header of the new outer
    addresses.

    inner_seq_delta is added (mod 2**32) to the quoted TCP sequence number:
    when FULLNAT shifts sequence numbers, an error sent to the client must
    quote them in the client's space or its stack discards the error as out
    of window (DPVS: seq -= fnat_seq.delta).

    mtu_delta is taken off the MTU of a "too big" error (ICMP fragmentation needed,
    ICMPv6 packet too big): when the director lengthens the client's packets, the
    client must send that much less for them to fit.
    """
    inner = pkt.inner
    if inner is None or (pkt.proto != ICMP and pkt.proto != ICMPV6):
        raise ValueError("rewrite_icmp_error needs an ICMP error with a parsed embedded packet")
    family = pkt.family
    _check_addrs(family, outer_src, outer_dst, inner_src, inner_dst)
    l4 = pkt.l4
    end = pkt.end
    out = bytearray(buf[:end])
    io = inner.off
    il4 = inner.l4
    if family == 4:
        out[12:20] = outer_src + outer_dst
        out[10:12] = b"\0\0"
        _H.pack_into(out, 10, checksum(out[:l4]))
        out[io + 12:io + 20] = inner_src + inner_dst
        out[io + 10:io + 12] = b"\0\0"
        _H.pack_into(out, io + 10, checksum(out[io:il4]))
    else:
        out[8:40] = outer_src + outer_dst
        out[io + 8:io + 40] = inner_src + inner_dst
    _HH.pack_into(out, il4, inner_sport, inner_dport)
    if inner_seq_delta and inner.proto == TCP:
        _L.pack_into(out, il4 + 4, (_L.unpack_from(out, il4 + 4)[0] + inner_seq_delta) & 0xFFFFFFFF)
    if mtu_delta:
        # (an MTU of 0, from a router older than RFC 1191, stays: the client guesses)
        if family == 4 and pkt.icmp_type == 3 and pkt.icmp_code == 4 and out[l4 + 6:l4 + 8] != b"\0\0":
            _H.pack_into(out, l4 + 6, max(_H.unpack_from(out, l4 + 6)[0] - mtu_delta, 68))
        elif family == 6 and pkt.icmp_type == 2:
            _L.pack_into(out, l4 + 4, max(_L.unpack_from(out, l4 + 4)[0] - mtu_delta, 1280))
    out[l4 + 2:l4 + 4] = b"\0\0"
    s = ones_sum(out[l4:end])
    if family == 6:
        s += pseudo_header_sum(outer_src, outer_dst, ICMPV6, end - l4)
    _H.pack_into(out, l4 + 2, ~fold(s) & 0xFFFF)
    return bytes(out)
