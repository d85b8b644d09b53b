"""udp-hold: long-lived UDP flows echoing numbered datagrams."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any


class _UdpFlow(asyncio.DatagramProtocol):
    def __init__(self, i: int) -> None:
        self.i, self.seen = i, set()
        self.sent_at: list[float] = []      # wall time each datagram was sent, by number
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        head, _, num = data.partition(b" ")
        if head == str(self.i).encode() and num.isdigit():
            self.seen.add(int(num))

    def lost_runs(self) -> list[list[float]]:
        """Each run of consecutive lost datagrams: [first number, last number, wall time the
        first was sent, wall time the last was sent]."""
        runs: list[list[float]] = []
        for k, t in enumerate(self.sent_at):
            if k in self.seen:
                continue
            if runs and runs[-1][1] == k - 1:
                runs[-1][1], runs[-1][3] = k, round(t, 4)
            else:
                runs.append([k, k, round(t, 4), round(t, 4)])
        return runs

    def last_answered(self) -> float | None:
        """Wall time the last datagram that came back was sent."""
        return round(self.sent_at[max(self.seen)], 4) if self.seen else None


async def udp_hold(args) -> dict[str, Any]:
    """M UDP flows, each one socket (one source port, so one connection on the
    director), sending a numbered datagram every --interval for --seconds (or until
    --stop-file exists); a datagram whose echo never came back within --timeout after the
    end is lost. Per flow, the lost datagrams are reported as runs with the times they were
    sent, so a drill can tell loss in its outage window from loss outside it."""
    loop = asyncio.get_running_loop()
    flows = []
    for i in range(args.flows):
        _t, proto = await loop.create_datagram_endpoint(lambda i=i: _UdpFlow(i),
                                                        remote_addr=(args.host, args.port))
        flows.append(proto)
    start = time.monotonic()
    stop_at = start + args.seconds
    next_check = start
    k = 0
    while (now := time.monotonic()) < stop_at:
        if args.stop_file and now >= next_check:
            next_check = now + 0.1
            if os.path.exists(args.stop_file):
                break
        wall = time.time()
        for f in flows:
            f.transport.sendto(f"{f.i} {k}".encode())
            f.sent_at.append(wall)
        k += 1
        await asyncio.sleep(max(0.0, start + k * args.interval - time.monotonic()))
    await asyncio.sleep(args.timeout)
    for f in flows:
        f.transport.close()
    sent = sum(len(f.sent_at) for f in flows)
    got = sum(len(f.seen) for f in flows)
    return {"flows": len(flows), "sent": sent, "received": got, "lost": sent - got,
            "lost_per_flow_max": max((len(f.sent_at) - len(f.seen) for f in flows), default=0),
            "lost_runs": [f.lost_runs() for f in flows],
            "last_answered_sent_at": [f.last_answered() for f in flows]}
