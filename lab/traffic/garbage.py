"""garbage: malformed IPv4 packets through a raw socket, to prove the director drops them
(lab.client sends an IPv6 target to lab.traffic.garbage6)."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import socket
import struct
import time
from typing import Any

from .common import Deadline, UsageError, classify, garbage_kinds, inc, source_towards


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _iphdr(src: bytes, dst: bytes, proto: int, payload_len: int, *, ihl: int = 5, tot_len=None,
           frag: int = 0, options: bytes = b"", ident: int | None = None) -> bytes:
    tot = tot_len if tot_len is not None else 20 + len(options) + payload_len
    hdr = struct.pack("!BBHHHBBH4s4s", (4 << 4) | (ihl & 0xF), 0, tot & 0xFFFF,
                      random.getrandbits(16) if ident is None else ident, frag, 64, proto, 0,
                      src, dst) + options
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]


def _l4_csum(src: bytes, dst: bytes, proto: int, seg: bytes) -> int:
    return _csum(src + dst + struct.pack("!BBH", 0, proto, len(seg)) + seg)


def _tcp(src: bytes, dst: bytes, sport: int, dport: int, flags: int, payload: bytes = b"",
         good_csum: bool = True, doff: int = 5) -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, random.getrandbits(32), random.getrandbits(32),
                      (doff & 0xF) << 4, flags, 65535, 0, 0) + payload
    c = _l4_csum(src, dst, 6, seg)
    if not good_csum:
        c = (c + 1 + random.randrange(0xFFFE)) & 0xFFFF or 1
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def _udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, good_csum: bool = True,
         length: int | None = None) -> bytes:
    ln = 8 + len(payload) if length is None else length
    seg = struct.pack("!HHHH", sport, dport, ln & 0xFFFF, 0) + payload
    c = _l4_csum(src, dst, 17, seg) or 0xFFFF
    if not good_csum:
        c = (c + 1 + random.randrange(0xFFFE)) & 0xFFFF or 1
    return seg[:6] + struct.pack("!H", c) + seg[8:]


#: where the kernel keeps the range of ephemeral ports it gives the namespace's sockets
PORT_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def quiet_ports(port_range: str) -> range:
    """Source ports no socket of this namespace gets by itself: outside its ephemeral range
    (given as the file above holds it), the larger side of it, above 1023.

    Why it matters: the director checks the checksum of a packet that would open a
    connection, and, as IPVS does, forwards a packet of a known connection as it is (the
    real server's stack drops it).  A malformed packet from a port an earlier exchange used
    would find that exchange's entry and be forwarded, not counted (CI: 158 of 160)."""
    low, high = (int(x) for x in port_range.split())
    below, above = range(1024, low), range(high + 1, 65536)
    return below if len(below) >= len(above) else above


@functools.cache
def _quiet_ports() -> range:
    with open(PORT_RANGE_FILE) as f:
        return quiet_ports(f.read())


def _sport() -> int:
    return random.choice(_quiet_ports())


def garbage_packet(kind: str, src: bytes, dst: bytes, port: int) -> bytes:
    R = random.randrange
    if kind == "truncated_ip":  # fewer than 20 bytes; IHL matches what is there (3 or 4 words)
        words = random.choice([3, 4])
        hdr = bytearray(_iphdr(src, dst, 6, 0, ihl=words))
        return bytes(hdr[: words * 4])
    if kind == "bad_ihl":  # IHL 0..4 on a full header + TCP SYN
        tcp = _tcp(src, dst, _sport(), port, 0x02)
        return _iphdr(src, dst, 6, len(tcp), ihl=R(0, 5)) + tcp
    if kind == "bad_total_length":  # total length beyond the buffer (see notes: kernel rewrites)
        tcp = _tcp(src, dst, _sport(), port, 0x02)
        return _iphdr(src, dst, 6, len(tcp), tot_len=20 + len(tcp) + R(1, 1400)) + tcp
    if kind == "bad_tcp_csum":
        flags = random.choice([0x02, 0x10, 0x18, 0x11, 0x04])
        payload = os.urandom(R(0, 64)) if flags & 0x08 else b""
        tcp = _tcp(src, dst, _sport(), port, flags, payload, good_csum=False)
        return _iphdr(src, dst, 6, len(tcp)) + tcp
    if kind == "bad_udp_csum":
        udp = _udp(src, dst, _sport(), port, os.urandom(R(1, 64)), good_csum=False)
        return _iphdr(src, dst, 17, len(udp)) + udp
    if kind == "truncated_tcp":  # valid IP header, TCP header cut short
        seg = _tcp(src, dst, _sport(), port, 0x02)[: R(1, 20)]
        return _iphdr(src, dst, 6, len(seg)) + seg
    if kind == "bad_tcp_doff":  # data offset < 5 or beyond the segment
        doff = random.choice([0, 1, 2, 3, 4, 15])
        tcp = _tcp(src, dst, _sport(), port, 0x02, doff=doff)
        return _iphdr(src, dst, 6, len(tcp)) + tcp
    if kind == "truncated_udp":
        seg = _udp(src, dst, _sport(), port, b"x")[: R(1, 8)]
        return _iphdr(src, dst, 17, len(seg)) + seg
    if kind == "bad_udp_len":  # UDP length field larger / smaller than the datagram
        payload = os.urandom(R(1, 64))
        ln = random.choice([R(0, 8), 8 + len(payload) + R(1, 1000)])
        udp = _udp(src, dst, _sport(), port, payload, length=ln)
        return _iphdr(src, dst, 17, len(udp)) + udp
    if kind == "fragment":  # first fragment (MF) or a later fragment of a TCP SYN to the port
        tcp = _tcp(src, dst, _sport(), port, 0x02, os.urandom(16))
        if random.random() < 0.5:
            return _iphdr(src, dst, 6, len(tcp), frag=0x2000) + tcp  # MF, offset 0
        return _iphdr(src, dst, 6, len(tcp), frag=R(1, 100)) + tcp  # offset > 0
    if kind == "ip_options":  # IHL 6..15 with random option bytes
        words = R(1, 11)
        opts = os.urandom(words * 4)
        tcp = _tcp(src, dst, _sport(), port, 0x02)
        return _iphdr(src, dst, 6, len(tcp), ihl=5 + words, options=opts) + tcp
    if kind == "random":  # a plain IPv4 header (lab addresses), random protocol and bytes
        proto = random.choice([6, 17, R(0, 256)])
        data = os.urandom(R(0, 1400))
        hdr = bytearray(_iphdr(src, dst, proto, len(data)))
        hdr[1] = R(0, 256)  # TOS
        hdr[6:8] = os.urandom(2)  # flags / fragment offset
        return bytes(hdr) + data
    raise UsageError(f"unknown garbage kind {kind!r}")


GARBAGE_KINDS = [
    "truncated_ip", "bad_ihl", "bad_total_length", "bad_tcp_csum", "bad_udp_csum",
    "truncated_tcp", "bad_tcp_doff", "truncated_udp", "bad_udp_len", "fragment", "ip_options",
    "random",
]


async def garbage(args) -> dict[str, Any]:
    dl = Deadline(args.deadline)
    kinds = garbage_kinds(args.kinds, GARBAGE_KINDS)
    src_ip = source_towards(args.target, args.port, socket.AF_INET)
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(args.target)
    if args.seed is not None:
        random.seed(args.seed)
    sent: dict[str, int] = {k: 0 for k in kinds}
    rejected: dict[str, dict[str, int]] = {}
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # implies IP_HDRINCL
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    gap = 1.0 / args.rate if args.rate > 0 else 0.0
    next_t = time.monotonic()
    t0 = next_t
    try:
        for k in kinds:
            for _ in range(args.count):
                if dl.expired():
                    break
                pkt = garbage_packet(k, src, dst, args.port)
                try:
                    s.sendto(pkt, (args.target, 0))
                    sent[k] += 1
                except OSError as exc:
                    inc(rejected.setdefault(k, {}), classify(exc))
                if gap:
                    next_t += gap
                    delay = next_t - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
    finally:
        s.close()
    return {
        "target": args.target,
        "port": args.port,
        "source": src_ip,
        "count_per_kind": args.count,
        "sent": sent,
        "total_sent": sum(sent.values()),
        "rejected_by_kernel": rejected,
        "deadline_hit": dl.expired(),
        "seconds": round(time.monotonic() - t0, 3),
        "notes": [
            "with IP_HDRINCL the kernel rewrites total length and header checksum when IHL >= 5,"
            " so bad_total_length reaches the wire with a correct length; kernels that refuse"
            " IHL < 5 from a raw socket (EINVAL) count truncated_ip/bad_ihl in rejected_by_kernel",
            "a router drops malformed IP headers (truncated_ip, bad_ihl) before they reach a"
            " director; the L4 kinds pass the router",
        ],
    }
