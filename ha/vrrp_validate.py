"""Receive validation of VRRP adverts for one instance (RFC 5798 §7.1, keepalived's checks), sans-IO.

`AdvertFilter(cfg).reject(advert, src, ttl, dst)` gives the reason an advert is dropped (the
machine counts it as ``drop_<reason>``), or None and the source's canonical address when it may
be processed.  Checked in this order: a source that is not an address (bad_address), own advert
(src == primary_address: own), then the transport, decided from the configuration as keepalived
does (never from the packet, or a host several hops away could claim priority 255 by sending to
us directly): without unicast_peers, TTL / hop limit != 255 (ttl), for IPv6 a source that is not
link-local (not_link_local: RFC 5798 §5.1.2.1, the adverts of an IPv6 instance come from the
interface's fe80::/10 address, so a global source is off-link or forged), or a destination other
than the VRRP group (dst); with unicast_peers, a source that is not a configured peer (peer), whatever the
destination, and no TTL check (keepalived's unicast mode); then version (version), VRID (vrid),
address list differs from ours as a multiset (addresses; keepalived's exact-list check).

Whether the instance is running and the address-owner rule stay in the state machine (ha/vrrp.py):
they depend on its state, not on the packet.

An IPv6 source may carry a zone (``fe80::1%eth0``, as a socket reports it): the zone is dropped,
the instance is bound to one interface, so the returned address compares (own, peers, the
tie-break) as the bare address.
"""
from __future__ import annotations

import ipaddress
from typing import Any

from proto.vrrp import Advert

__all__ = ["AdvertFilter", "canonical"]


def _address(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(addr)
    if ip.version == 6 and ip.scope_id:
        ip = ipaddress.IPv6Address(ip.packed)
    return ip


def canonical(addr: str) -> str:
    """The canonical text form of an address, without an IPv6 zone (ValueError if it is not
    an address)."""
    return str(_address(addr))


class AdvertFilter:
    """The receive checks of one instance; cfg is its ha.vrrp.VrrpConfig."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self._vips = sorted(cfg.addresses)
        self._peers = frozenset(cfg.unicast_peers)
        self._group = ipaddress.ip_address(cfg.group)

    def _is_group(self, dst: str) -> bool:
        try:
            return ipaddress.ip_address(dst) == self._group
        except ValueError:
            return False

    def reject(self, advert: Advert, src: str, ttl: int, dst: str | None
               ) -> tuple[str | None, Any]:
        """(reason, None) to drop; (None, source address) to process.  dst None: the VRRP group
        (for callers that have no IP header)."""
        cfg = self.cfg
        try:
            src_ip = _address(src)
        except ValueError:
            return "bad_address", None
        if str(src_ip) == cfg.primary_address:
            return "own", None
        if self._peers:
            if str(src_ip) not in self._peers:
                return "peer", None
        else:
            if ttl != 255:
                return "ttl", None
            if src_ip.version == 6 and not src_ip.is_link_local:
                return "not_link_local", None
            if dst is not None and not self._is_group(dst):
                return "dst", None
        if advert.version != cfg.version:
            return "version", None
        if advert.vrid != cfg.vrid:
            return "vrid", None
        try:
            theirs = sorted(canonical(a) for a in advert.addresses)
        except ValueError:
            return "addresses", None
        if theirs != self._vips:
            return "addresses", None
        return None, src_ip
