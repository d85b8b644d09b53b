"""tcp-probe, tcp-whoami and udp-whoami: short exchanges, counted by the real server that answered."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import Any

from .common import Deadline, classify, family_of, inc, parse_whoami


async def tcp_probe(args) -> dict[str, Any]:
    dl = Deadline(args.deadline)
    results: dict[str, str] = {}
    for host in args.host:
        if dl.expired():
            results[host] = "deadline"
            continue
        try:
            async with asyncio.timeout(dl.op(args.timeout)):
                _r, w = await asyncio.open_connection(host, args.port)
            results[host] = "open"
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
        except ConnectionRefusedError:
            results[host] = "refused"
        except Exception as exc:  # noqa: BLE001 - reported
            results[host] = classify(exc)
    reachable = {h: r in ("open", "refused") for h, r in results.items()}
    return {"port": args.port, "results": results, "reachable": reachable}


# ---------------------------------------------------------------------------------------------
# tcp-whoami / udp-whoami


#: UDP sockets udp-whoami keeps open at once (below the default limit of 1024 files)
HELD_UDP_SOCKETS = 512


class WhoamiStats:
    def __init__(self) -> None:
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.by_server: dict[str, int] = {}
        self.peers: dict[str, set[str]] = {}
        self.local_ports: set[int] = set()
        #: replies naming this connection's own client address and port (a PROXY service)
        self.own_address_seen = 0

    def record(self, reply: str, local: tuple[str, int] | None = None) -> bool:
        parsed = parse_whoami(reply)
        if parsed is None:
            inc(self.errors, "bad_reply")
            return False
        name, ip, port = parsed
        if local is not None and (ip, port) == local:
            self.own_address_seen += 1
        self.ok += 1
        inc(self.by_server, name)
        self.peers.setdefault(name, set()).add(ip)
        return True

    def result(self, count: int, failed_key: str, seconds: float) -> dict[str, Any]:
        return {
            "count": count,
            "ok": self.ok,
            failed_key: count - self.ok,
            "errors": dict(sorted(self.errors.items())),
            "by_server": dict(sorted(self.by_server.items())),
            "peers": {k: sorted(v) for k, v in sorted(self.peers.items())},
            "distinct_source_ports": len(self.local_ports),
            "own_address_seen": self.own_address_seen,
            "seconds": round(seconds, 3),
        }


async def _run_workers(count: int, concurrency: int, dl: Deadline, one, stats: WhoamiStats):
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:
            if dl.expired():
                inc(stats.errors, "deadline")
                continue
            await one(i)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, count)))))


async def _run_paced(count: int, rate: float, stop_file: str | None, dl: Deadline, one,
                     stats: WhoamiStats) -> int:
    """Start exchange i at i/rate seconds, each on its own (a slow one does not hold the
    next back), until `count` are started, the deadline nears or `stop_file` exists;
    return how many were started, after all of them have ended."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tasks = []
    for i in range(count):
        if dl.expired() or (stop_file and os.path.exists(stop_file)):
            break
        await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
        tasks.append(asyncio.ensure_future(one(i)))
    await asyncio.gather(*tasks)
    return len(tasks)


async def tcp_whoami(args) -> dict[str, Any]:
    dl = Deadline(args.deadline)
    stats = WhoamiStats()
    t0 = time.monotonic()

    first = getattr(args, "source_ports", None)
    if first is not None and first + args.count - 1 > 65535:
        raise ValueError(f"--source-ports {first} leaves no port for {args.count} connections")
    wildcard = "::" if family_of(args.host) == socket.AF_INET6 else "0.0.0.0"

    async def one(i: int) -> None:
        w = None
        try:
            async with asyncio.timeout(dl.op(args.timeout)):
                local_addr = None if first is None else (wildcard, first + i)
                r, w = await asyncio.open_connection(args.host, args.port, local_addr=local_addr)
                local = w.get_extra_info("sockname")[:2]
                stats.local_ports.add(local[1])
                w.write(b"WHOAMI\n")
                await w.drain()
                line = await r.readline()
            if not line:
                inc(stats.errors, "eof")
            else:
                stats.record(line.decode(errors="replace"), (local[0], local[1]))
        except Exception as exc:  # noqa: BLE001 - counted
            inc(stats.errors, classify(exc))
        finally:
            if w is not None:
                w.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(dl.op(args.timeout)):
                        await w.wait_closed()

    count = args.count
    if getattr(args, "rate", None):
        count = await _run_paced(args.count, args.rate, args.stop_file, dl, one, stats)
    else:
        await _run_workers(args.count, args.concurrency, dl, one, stats)
    return stats.result(count, "failed", time.monotonic() - t0)


async def udp_whoami(args) -> dict[str, Any]:
    dl = Deadline(args.deadline)
    stats = WhoamiStats()
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()

    # Each exchange's socket stays open until the run ends (up to HELD_UDP_SOCKETS of
    # them), so the OS cannot hand a closed socket's port to a later exchange: every
    # exchange is a flow of its own, which tests count on.
    held: list[socket.socket] = []

    async def one(_i: int) -> None:
        s = socket.socket(family_of(args.host), socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            s.connect((args.host, args.port))  # fresh socket: a new source port
            local = s.getsockname()[:2]
            stats.local_ports.add(local[1])
            await loop.sock_sendall(s, b"WHOAMI\n")
            async with asyncio.timeout(dl.op(args.timeout)):
                data = await loop.sock_recv(s, 65535)
            stats.record(data.decode(errors="replace"), (local[0], local[1]))
        except Exception as exc:  # noqa: BLE001 - counted
            inc(stats.errors, classify(exc))
        finally:
            held.append(s)
            if len(held) > HELD_UDP_SOCKETS:
                held.pop(0).close()

    try:
        await _run_workers(args.count, args.concurrency, dl, one, stats)
    finally:
        for s in held:
            s.close()
    return stats.result(args.count, "lost", time.monotonic() - t0)
