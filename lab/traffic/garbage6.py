"""garbage over IPv6: malformed packets to an IPv6 VIP through a raw socket (the IPv6 header
written here), to prove the director counts and drops them.

Only what a router forwards unchanged reaches a director: the kinds are malformed above the
IPv6 header (transport checksums and lengths, extension headers), never in it.  The
transport checksums use lab.traffic.garbage's builders: IPv6's pseudo-header (RFC 8200 8.1)
has the same one's-complement sum as IPv4's for the same addresses, length and protocol.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
from typing import Any

from .common import Deadline, UsageError, classify, garbage_kinds, inc, source_towards
from .garbage import _sport, _tcp, _udp

#: Linux: IPPROTO_RAW on an AF_INET6 raw socket sends the caller's IPv6 header (IPV6_HDRINCL)
IPV6_HDRINCL = 36
DSTOPTS, NO_NEXT, ROUTING = 60, 59, 43


def _ip6(src: bytes, dst: bytes, nh: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, 64, src, dst) + payload


def garbage6_packet(kind: str, src: bytes, dst: bytes, port: int) -> bytes:
    R = random.randrange
    if kind == "bad_tcp_csum":          # a SYN (a new connection: its checksum is checked)
        return _ip6(src, dst, 6, _tcp(src, dst, _sport(), port, 0x02, good_csum=False))
    if kind == "bad_udp_csum":
        return _ip6(src, dst, 17, _udp(src, dst, _sport(), port, os.urandom(R(1, 64)), good_csum=False))
    if kind == "truncated_tcp":
        return _ip6(src, dst, 6, _tcp(src, dst, _sport(), port, 0x02)[: R(1, 20)])
    if kind == "bad_tcp_doff":
        return _ip6(src, dst, 6, _tcp(src, dst, _sport(), port, 0x02, doff=random.choice([0, 1, 2, 3, 4, 15])))
    if kind == "truncated_udp":
        return _ip6(src, dst, 17, _udp(src, dst, _sport(), port, b"x")[: R(1, 8)])
    if kind == "bad_udp_len":
        payload = os.urandom(R(1, 64))
        ln = random.choice([R(0, 8), 8 + len(payload) + R(1, 1000)])
        return _ip6(src, dst, 17, _udp(src, dst, _sport(), port, payload, length=ln))
    if kind == "bad_ext_header":        # destination options whose length runs past the packet
        tcp = _tcp(src, dst, _sport(), port, 0x02)
        return _ip6(src, dst, DSTOPTS, bytes([6, R(8, 256)]) + b"\x01\x04\0\0\0\0" + tcp[:4])
    if kind == "no_next_header":        # nothing to balance: counted as unsupported
        return _ip6(src, dst, NO_NEXT, os.urandom(R(0, 64)))
    raise UsageError(f"unknown IPv6 garbage kind {kind!r}")


GARBAGE6_KINDS = ["bad_tcp_csum", "bad_udp_csum", "truncated_tcp", "bad_tcp_doff",
                  "truncated_udp", "bad_udp_len", "bad_ext_header", "no_next_header"]


async def garbage6(args) -> dict[str, Any]:
    dl = Deadline(args.deadline)
    kinds = garbage_kinds(args.kinds, GARBAGE6_KINDS, "IPv6 kinds")
    src_ip = source_towards(args.target, args.port, socket.AF_INET6)
    src, dst = (socket.inet_pton(socket.AF_INET6, a) for a in (src_ip, args.target))
    if args.seed is not None:
        random.seed(args.seed)
    sent: dict[str, int] = {k: 0 for k in kinds}
    rejected: dict[str, dict[str, int]] = {}
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IPV6, IPV6_HDRINCL, 1)
    gap = 1.0 / args.rate if args.rate > 0 else 0.0
    next_t = t0 = time.monotonic()
    try:
        for k in kinds:
            for _ in range(args.count):
                if dl.expired():
                    break
                try:
                    s.sendto(garbage6_packet(k, src, dst, args.port), (args.target, 0))
                    sent[k] += 1
                except OSError as exc:
                    inc(rejected.setdefault(k, {}), classify(exc))
                if gap:
                    next_t += gap
                    if (delay := next_t - time.monotonic()) > 0:
                        await asyncio.sleep(delay)
    finally:
        s.close()
    return {"target": args.target, "port": args.port, "source": src_ip,
            "count_per_kind": args.count, "sent": sent, "total_sent": sum(sent.values()),
            "rejected_by_kernel": rejected, "deadline_hit": dl.expired(),
            "seconds": round(time.monotonic() - t0, 3)}
