"""Refusing a new connection with no usable real server (ip_vs_leave).

IPVS answers such a packet with ICMP port unreachable (ICMPv6 for an IPv6
service), for TCP too ("the TCP socket is not actually created, the TCP RST
packet cannot be sent"), so the client fails at once instead of retrying for
minutes.  The kernel's icmp_send is rate-limited twice, and so is this: a
token bucket per client host (icmp_ratelimit: one per second, bursts of six,
XRLIM_BURST_FACTOR) and one for the node (icmp_msgs_per_sec 1000, burst
icmp_msgs_burst 50).  Time comes in as `now`.
"""
from __future__ import annotations

from proto import icmp

#: per client host: one error a second, in bursts of up to six
HOST_RATE, HOST_BURST = 1.0, 6.0
#: for the whole node: 1000 errors a second, in bursts of up to 50
NODE_RATE, NODE_BURST = 1000.0, 50.0
#: client hosts remembered; past this the oldest half is forgotten (each gets a full bucket again)
MAX_HOSTS = 65536


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens, self.at = tokens, at

    def take(self, now: float, rate: float, burst: float) -> bool:
        self.tokens = min(burst, self.tokens + max(0.0, now - self.at) * rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Leave:
    """Decides whether a refused packet is answered, and builds the answer."""

    def __init__(self, now: float = 0.0) -> None:
        self.node = _Bucket(NODE_BURST, now)
        self.hosts: dict[bytes, _Bucket] = {}
        self.sent = 0
        self.suppressed = 0

    def answer(self, data: bytes, pkt, now: float) -> bytes | None:
        """The ICMP error for the refused packet, or None (rate-limited or not
        to be answered)."""
        if not icmp.may_answer(pkt):
            return None
        src = bytes(pkt.src)
        host = self.hosts.get(src)
        if host is None:
            if len(self.hosts) >= MAX_HOSTS:
                for k in list(self.hosts)[:MAX_HOSTS // 2]:
                    del self.hosts[k]
            host = self.hosts[src] = _Bucket(HOST_BURST, now)
        if not host.take(now, HOST_RATE, HOST_BURST) or not self.node.take(now, NODE_RATE, NODE_BURST):
            self.suppressed += 1
            return None
        self.sent += 1
        return icmp.port_unreachable(data, pkt)
