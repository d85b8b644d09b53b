"""udp-hold: long-lived UDP flows echoing numbered datagrams."""

from __future__ import annotations

import asyncio
import time
from typing import Any


class _UdpFlow(asyncio.DatagramProtocol):
    def __init__(self, i: int) -> None:
        self.i, self.sent, self.seen = i, 0, set()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        head, _, num = data.partition(b" ")
        if head == str(self.i).encode() and num.isdigit():
            self.seen.add(int(num))


async def udp_hold(args) -> dict[str, Any]:
    """M UDP flows, each one socket (one source port, so one connection on the
    director), sending a numbered datagram every --interval for --seconds; a
    datagram whose echo never came back within --timeout after the end is lost."""
    loop = asyncio.get_running_loop()
    flows = []
    for i in range(args.flows):
        _t, proto = await loop.create_datagram_endpoint(lambda i=i: _UdpFlow(i),
                                                        remote_addr=(args.host, args.port))
        flows.append(proto)
    start = time.monotonic()
    stop_at = start + args.seconds
    k = 0
    while time.monotonic() < stop_at:
        for f in flows:
            f.transport.sendto(f"{f.i} {k}".encode())
            f.sent += 1
        k += 1
        await asyncio.sleep(max(0.0, start + k * args.interval - time.monotonic()))
    await asyncio.sleep(args.timeout)
    for f in flows:
        f.transport.close()
    sent = sum(f.sent for f in flows)
    got = sum(len(f.seen) for f in flows)
    return {"flows": len(flows), "sent": sent, "received": got, "lost": sent - got,
            "lost_per_flow_max": max((f.sent - len(f.seen) for f in flows), default=0)}
