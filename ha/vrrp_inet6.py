"""The IPv6 half of the VRRP runner's socket (RFC 5798 §5.1.2): what differs from IPv4.

``socket(AF_INET6, SOCK_RAW, 112)`` bound to the interface (SO_BINDTODEVICE), joined to ff02::12
on it (multicast mode; unicast mode joins nothing), multicast and unicast hop limit 255,
multicast loop off.  An IPv6 raw socket delivers the payload without the IPv6 header, so the
hop limit and the destination come as ancillary data (IPV6_RECVHOPLIMIT, IPV6_RECVPKTINFO) and
the source from recvmsg's address (``fe80::1%front``: the state machine drops the zone); a
datagram without them is counted in the runner's stats["rx_not_ipv4"] (datagrams it could not
read) and dropped.  The
kernel neither computes nor checks the checksum (no IPV6_CHECKSUM): proto.vrrp does both with the
pseudo-header.  Every advert is sent with an IPV6_PKTINFO control message naming the interface
and cfg.primary_address (the link-local address), so the source the kernel writes is the one the
checksum was computed with.
"""
from __future__ import annotations

import socket
import struct

from proto import vrrp as P

__all__ = ["open_socket6", "pktinfo6", "recv6"]

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
_CMSG_SPACE = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4)


def open_socket6(ifname: str, cfg) -> tuple[socket.socket, int]:
    """The raw IPv6 VRRP socket for cfg (ha.vrrp.VrrpConfig) on ifname, and the ifindex."""
    ifindex = socket.if_nametoindex(ifname)
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, P.IPPROTO_VRRP)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, ifname.encode() + b"\0")
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
        if not cfg.unicast_peers:
            mreq = socket.inet_pton(socket.AF_INET6, P.VRRP_GROUP6) + struct.pack("=I", ifindex)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s, ifindex


def pktinfo6(source: str, ifindex: int) -> tuple[int, int, bytes]:
    """The control message that sends from `source` out of ifindex (struct in6_pktinfo)."""
    return (socket.IPPROTO_IPV6, IPV6_PKTINFO,
            socket.inet_pton(socket.AF_INET6, source) + struct.pack("=I", ifindex))


def recv6(sock: socket.socket, bufsize: int) -> tuple[str, str, int, bytes] | None:
    """(src, dst, hop limit, payload) of one datagram; None when the ancillary data is missing.
    Raises BlockingIOError when there is nothing to read."""
    data, anc, _flags, addr = sock.recvmsg(bufsize, _CMSG_SPACE)
    dst, hlim = None, None
    for level, kind, value in anc:
        if level != socket.IPPROTO_IPV6:
            continue
        if kind == IPV6_PKTINFO and len(value) >= 16:
            dst = socket.inet_ntop(socket.AF_INET6, value[:16])
        elif kind == IPV6_HOPLIMIT and len(value) >= 4:
            hlim = struct.unpack("=i", value[:4])[0]
    if dst is None or hlim is None:
        return None
    return addr[0], dst, hlim, data
