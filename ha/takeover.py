"""Address takeover: VIPs on the front interface, laddrs on the back one.

The order is the point (docs/failover-pitfalls.md, 2 and 5): the caller has the
synced connections in the engine and the NFQUEUE rules in place *before*
`acquire` adds an address, so the first packet for a VIP or laddr already
finds its connection; then gratuitous ARPs on both segments move the router's
entry for the VIP and the real servers' entries for the laddrs.

Every kernel operation goes through `kernel`, the node's privileged interface
(tandem.kernel.Kernel: add_addresses, del_addresses, announce); this module
only decides what to do and when.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

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


class Takeover:
    def __init__(self, cfg: TakeoverConfig, kernel: Any) -> None:
        self.cfg = cfg
        self.kernel = kernel
        self.held = False

    async def _change(self, add: bool, ifname: str, addrs: tuple[str, ...]) -> None:
        # In a worker thread: a netlink round trip, and pyroute2's IPRoute runs an event loop
        # of its own (its async twin cannot run on uvloop: no netlink datagram endpoints there).
        op = self.kernel.add_addresses if add else self.kernel.del_addresses
        await asyncio.to_thread(op, ifname, addrs)

    async def acquire(self) -> None:
        """Add the addresses; then announce them (see `announce`)."""
        await self._change(True, self.cfg.front_if, self.cfg.vips)
        await self._change(True, self.cfg.back_if, self.cfg.laddrs)
        self.held = True

    async def announce(self) -> None:
        """Gratuitous ARPs (IPv4) and unsolicited neighbour advertisements (IPv6) on both
        segments, after the addresses are in place."""
        await asyncio.gather(self._garp(self.cfg.front_if, self.cfg.vips),
                             self._garp(self.cfg.back_if, self.cfg.laddrs))

    async def release(self) -> None:
        await self._change(False, self.cfg.front_if, self.cfg.vips)
        await self._change(False, self.cfg.back_if, self.cfg.laddrs)
        self.held = False

    async def _garp(self, ifname: str, addrs: tuple[str, ...]) -> None:
        if not addrs:
            return
        for i in range(self.cfg.garp_count):
            try:
                # a packet socket's send does not block: no worker thread needed
                sent = self.kernel.announce(ifname, addrs)
            except OSError as exc:
                log.warning("gratuitous ARP on %s not sent: %s", ifname, exc)
                return
            if not sent:        # nothing announced
                return
            if i + 1 < self.cfg.garp_count:
                await asyncio.sleep(self.cfg.garp_interval)
