"""Address takeover: VIPs on the front interface, laddrs on the back one.

The order is the point (docs/failover-pitfalls.md, 2 and 5): the caller has the
synced connections in the engine and the NFQUEUE rules in place *before*
`acquire` adds an address, so the first packet for a VIP or laddr already
finds its connection; then gratuitous ARPs on both segments move the router's
entry for the VIP and the real servers' entries for the laddrs.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from proto.arp import ETH_P_ARP, garp_frame
from schema.keys import INTERFACES

log = logging.getLogger("tandem.takeover")


@dataclass(frozen=True)
class TakeoverConfig:
    front_if: str
    back_if: str
    vips: tuple[str, ...]
    laddrs: tuple[str, ...]
    garp_count: int = INTERFACES.default("garp_count")
    garp_interval: float = INTERFACES.default("garp_interval")


def _prefixlen(addr: str) -> int:
    return 32 if ipaddress.ip_address(addr).version == 4 else 128


def change_addresses(cmd: str, ifname: str, addrs: tuple[str, ...]) -> None:
    """Add or delete addresses on an interface; idempotent either way."""
    ok_errors = {errno.EEXIST} if cmd == "add" else {errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV}
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=ifname)
        if not links:
            if cmd == "add":
                raise OSError(errno.ENODEV, f"no interface {ifname}")
            return
        for a in addrs:
            fam = socket.AF_INET if ipaddress.ip_address(a).version == 4 else socket.AF_INET6
            try:
                ipr.addr(cmd, index=links[0], address=a, prefixlen=_prefixlen(a), family=fam)
            except NetlinkError as exc:
                if exc.code not in ok_errors:
                    raise


def links_down(ifnames: list[str]) -> list[str]:
    """The tracked interfaces that are missing or not up."""
    down = []
    with IPRoute() as ipr:
        for name in ifnames:
            idx = ipr.link_lookup(ifname=name)
            links = ipr.get_links(*idx) if idx else []
            if not links or links[0].get("state") != "up":
                down.append(name)
    return down


class Takeover:
    def __init__(self, cfg: TakeoverConfig) -> None:
        self.cfg = cfg
        self.held = False

    async def _change(self, cmd: str, ifname: str, addrs: tuple[str, ...]) -> None:
        # In a worker thread: pyroute2's IPRoute runs an event loop of its own, and
        # its async twin cannot run on uvloop (no netlink datagram endpoints there).
        await asyncio.to_thread(change_addresses, cmd, ifname, addrs)

    async def acquire(self) -> None:
        """Add the addresses; then announce them (see `announce`)."""
        await self._change("add", self.cfg.front_if, self.cfg.vips)
        await self._change("add", self.cfg.back_if, self.cfg.laddrs)
        self.held = True

    async def announce(self) -> None:
        """Gratuitous ARPs on both segments, after the addresses are in place."""
        await asyncio.gather(self._garp(self.cfg.front_if, self.cfg.vips),
                             self._garp(self.cfg.back_if, self.cfg.laddrs))

    async def release(self) -> None:
        await self._change("del", self.cfg.front_if, self.cfg.vips)
        await self._change("del", self.cfg.back_if, self.cfg.laddrs)
        self.held = False

    async def _garp(self, ifname: str, addrs: tuple[str, ...]) -> None:
        v4 = [a for a in addrs if ipaddress.ip_address(a).version == 4]
        if not v4 or self.cfg.garp_count <= 0:
            return
        try:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
            s.bind((ifname, ETH_P_ARP))
        except OSError as exc:
            log.warning("gratuitous ARP on %s not sent: %s", ifname, exc)
            return
        try:
            mac = s.getsockname()[4][:6]
            frames = [garp_frame(mac, a) for a in v4]
            for i in range(self.cfg.garp_count):
                for f in frames:
                    try:
                        s.send(f)
                    except OSError as exc:
                        log.warning("gratuitous ARP on %s failed: %s", ifname, exc)
                        return
                if i + 1 < self.cfg.garp_count:
                    await asyncio.sleep(self.cfg.garp_interval)
        finally:
            s.close()
