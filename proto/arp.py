"""Gratuitous ARP frames (RFC 5227 §3 "ARP Announcement").

pyroute2 manages addresses and neighbours but does not send ARP, and scapy
is kept for tests; the frame is 42 fixed bytes, so it is built here.
"""
from __future__ import annotations

import ipaddress
import struct

BROADCAST = b"\xff" * 6
ETH_P_ARP = 0x0806


def garp_frame(mac: bytes, ip: str) -> bytes:
    """An ARP request with sender IP = target IP = `ip`, broadcast: every
    neighbour that has `ip` cached replaces its MAC with `mac` (Linux treats
    such a request as gratuitous and overrides even within locktime)."""
    if len(mac) != 6:
        raise ValueError("a MAC is 6 bytes")
    addr = ipaddress.IPv4Address(ip).packed
    eth = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + addr + b"\x00" * 6 + addr
    return eth + arp
