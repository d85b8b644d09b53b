"""Shared builders for unit tests: configs and scapy packets."""
from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from director.config import parse

CLIENT, VIP = "198.18.1.10", "198.18.0.100"
LADDRS = ["198.18.2.100", "198.18.2.101"]
RS = ["198.18.2.21", "198.18.2.22", "198.18.2.23"]


def make_config(scheduler="rr", reals=RS, laddrs=LADDRS, timeouts=None, limits=None,
                node=None, services=None, weights=None):
    weights = weights or [1] * len(reals)
    svc = lambda proto: {
        "proto": proto, "vip": VIP, "port": 80, "scheduler": scheduler, "laddrs": list(laddrs),
        "real_servers": [{"addr": a, "port": 8080, "weight": w} for a, w in zip(reals, weights)],
    }
    doc = {"node": {"name": "t", **(node or {})},
           "services": services if services is not None else [svc("tcp"), svc("udp")]}
    if timeouts:
        doc["timeouts"] = timeouts
    if limits:
        doc["limits"] = limits
    return parse(doc, "test.toml")


def tcp(src, dst, sport, dport, flags="S", payload=b"", seq=1000, ack=0):
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return bytes(ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack) / payload)


def udp(src, dst, sport, dport, payload=b"x"):
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return bytes(ip / UDP(sport=sport, dport=dport) / payload)


def checksums_ok(raw: bytes) -> bool:
    """scapy recomputes every checksum; the packet must be unchanged by it."""
    pkt = IPv6(raw) if raw[0] >> 4 == 6 else IP(raw)
    fresh = pkt.copy()
    for layer in (IP, TCP, UDP, ICMP):
        if fresh.haslayer(layer) and hasattr(fresh[layer], "chksum"):
            if layer is UDP and fresh[layer].chksum == 0 and fresh.haslayer(IP):
                continue
            del fresh[layer].chksum
    return bytes(fresh.__class__(bytes(fresh))) == raw
