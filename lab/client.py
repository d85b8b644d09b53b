"""The lab's traffic tool, run inside the client namespace (or any lab namespace).

    python -m lab.client <mode> [options]

Prints exactly one JSON object on stdout.  Every loop is bounded in count and in time: each
operation has ``--timeout`` seconds, the whole run has ``--deadline`` seconds.  Targets must be
IP literals in 198.18.0.0/15 (the lab) or loopback.

modes
  tcp-probe   --host H [--host H2 ...] --port P      connect once: open / refused / timeout
  tcp-whoami  --host VIP --port 80 --count N [--concurrency C | --rate R [--stop-file F]]
  udp-whoami  --host VIP --port 80 --count N [--concurrency C]
  bulk        --host VIP --port 80 --bytes N [--newlines]
  hold        --host VIP --port 80 --conns N --seconds S [--interval 0.02] [--ready-file F]
  garbage     --target VIP --count N [--kinds k1,k2] [--rate PPS]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import errno
import hashlib
import ipaddress
import json
import os
import random
import resource
import signal
import socket
import struct
import time
from typing import Any

LAB_NET = ipaddress.ip_network("198.18.0.0/15")
MAX_COUNT = 1_000_000
MAX_CONNS = 20_000
MAX_BYTES = 10 * 1024**3
MAX_SECONDS = 3600.0
MAX_GARBAGE_PER_KIND = 100_000


class UsageError(Exception):
    pass


def check_host(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"{host!r}: an IPv4 address literal is required") from None
    if ip.version != 4 or not (ip in LAB_NET or ip.is_loopback):
        raise UsageError(f"{host}: only 198.18.0.0/15 (the lab) or loopback targets are allowed")
    return host


def raise_nofile() -> None:
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def classify(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "broken_pipe"
    if isinstance(exc, (asyncio.IncompleteReadError, EOFError)):
        return "eof"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, f"errno{exc.errno}")
    return type(exc).__name__


def _inc(d: dict[str, int], key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0

    def op(self, timeout: float) -> float:
        """Timeout for one operation: never beyond the deadline."""
        return max(0.001, min(timeout, self.left()))


def parse_whoami(reply: str) -> tuple[str, str, int] | None:
    parts = reply.strip().split(" ")
    if len(parts) != 2 or ":" not in parts[1]:
        return None
    ip, _, port = parts[1].rpartition(":")
    try:
        return parts[0], ip, int(port)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# tcp-probe


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


class WhoamiStats:
    def __init__(self) -> None:
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.by_server: dict[str, int] = {}
        self.peers: dict[str, set[str]] = {}
        self.local_ports: set[int] = set()

    def record(self, reply: str) -> bool:
        parsed = parse_whoami(reply)
        if parsed is None:
            _inc(self.errors, "bad_reply")
            return False
        name, ip, _port = parsed
        self.ok += 1
        _inc(self.by_server, name)
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
            "seconds": round(seconds, 3),
        }


async def _run_workers(count: int, concurrency: int, dl: Deadline, one, stats: WhoamiStats):
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:
            if dl.expired():
                _inc(stats.errors, "deadline")
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

    async def one(_i: int) -> None:
        w = None
        try:
            async with asyncio.timeout(dl.op(args.timeout)):
                r, w = await asyncio.open_connection(args.host, args.port)
                stats.local_ports.add(w.get_extra_info("sockname")[1])
                w.write(b"WHOAMI\n")
                await w.drain()
                line = await r.readline()
            if not line:
                _inc(stats.errors, "eof")
            else:
                stats.record(line.decode(errors="replace"))
        except Exception as exc:  # noqa: BLE001 - counted
            _inc(stats.errors, classify(exc))
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

    async def one(_i: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            s.connect((args.host, args.port))  # fresh socket: a new source port
            stats.local_ports.add(s.getsockname()[1])
            await loop.sock_sendall(s, b"WHOAMI\n")
            async with asyncio.timeout(dl.op(args.timeout)):
                data = await loop.sock_recv(s, 65535)
            stats.record(data.decode(errors="replace"))
        except Exception as exc:  # noqa: BLE001 - counted
            _inc(stats.errors, classify(exc))
        finally:
            s.close()

    await _run_workers(args.count, args.concurrency, dl, one, stats)
    return stats.result(args.count, "lost", time.monotonic() - t0)


# ---------------------------------------------------------------------------------------------
# bulk

_NO_NL = bytes.maketrans(b"\n", b"\x0b")


async def bulk(args) -> dict[str, Any]:
    dl = Deadline(args.deadline)
    total = args.bytes
    rnd = random.Random(args.seed)
    h_sent, h_recv = hashlib.sha256(), hashlib.sha256()
    counts = {"sent": 0, "received": 0}
    result: dict[str, Any] = {}
    t0 = time.monotonic()
    w = None
    try:
        async with asyncio.timeout(dl.op(args.timeout)):
            r, w = await asyncio.open_connection(args.host, args.port, limit=1 << 20)

        async def sender() -> None:
            left = total
            while left > 0:
                n = min(args.chunk, left)
                chunk = rnd.randbytes(n)
                if not args.newlines:
                    chunk = chunk.translate(_NO_NL)
                h_sent.update(chunk)
                w.write(chunk)
                async with asyncio.timeout(dl.op(args.timeout)):
                    await w.drain()
                counts["sent"] += n
                left -= n
            if w.can_write_eof():
                w.write_eof()

        async def receiver() -> None:
            while counts["received"] < total:
                async with asyncio.timeout(dl.op(args.timeout)):  # idle timeout
                    data = await r.read(1 << 18)
                if not data:
                    break
                h_recv.update(data)
                counts["received"] += len(data)

        await asyncio.gather(sender(), receiver())
    except Exception as exc:  # noqa: BLE001 - reported
        result["error"] = classify(exc)
    finally:
        if w is not None:
            w.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await w.wait_closed()
    seconds = time.monotonic() - t0
    ok = counts["sent"] == total and counts["received"] == total
    result.update(
        {
            "bytes": total,
            "sent": counts["sent"],
            "received": counts["received"],
            "sha256_ok": ok and h_sent.digest() == h_recv.digest(),
            "seconds": round(seconds, 3),
            "mbit_per_s": round(counts["received"] * 8 / seconds / 1e6, 1) if seconds > 0 else None,
        }
    )
    return result


# ---------------------------------------------------------------------------------------------
# hold


class _HoldConn(asyncio.Protocol):
    """One held connection: lines are written by the scheduler in hold(), echoes are checked
    here as they arrive (no task, future or timer per message)."""

    __slots__ = ("i", "transport", "buf", "sent", "recv", "send_times", "last_echo", "max_gap",
                 "max_gap_end", "outcome", "closing", "t_start", "lost", "gaps", "across", "recent")

    #: gaps longer than this are remembered (start, end), for takeover timing
    GAP_NOTE = 0.05
    GAPS_KEPT = 16
    #: echoes per 10 ms since the hold started, shared by all connections (for plots)
    bins: collections.Counter = collections.Counter()
    origin = 0.0
    #: monotonic time of a fault, once the drill has announced it (--fault-file)
    fault_at: float | None = None

    def __init__(self, i: int):
        self.i = i
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.sent = 0
        self.recv = 0
        self.send_times: collections.deque[float] = collections.deque()
        self.last_echo = 0.0
        self.max_gap = 0.0
        self.max_gap_end = 0.0
        self.outcome = "connected"
        self.closing = False
        self.lost = asyncio.get_running_loop().create_future()
        self.gaps: list[tuple[float, float]] = []
        self.across: tuple[float, float] | None = None   # (last echo before, first after) the fault
        # echo times of the last second or so: the fault's time arrives after the
        # fault, so the first echo after it is found here, not guessed
        self.recent: collections.deque[float] = collections.deque(maxlen=64)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.outcome != "connected":
            return
        self.buf += data
        if b"\n" not in self.buf:
            if len(self.buf) > 4096:
                self._fail("mismatch")
            return
        *lines, self.buf = self.buf.split(b"\n")
        now = time.monotonic()
        prefix = f"{self.i} ".encode()
        for line in lines:
            if line != prefix + str(self.recv).encode() or not self.send_times:
                self._fail("mismatch")
                return
            self.recv += 1
            self.send_times.popleft()
            gap = now - self.last_echo
            if gap > self.max_gap:
                self.max_gap = gap
                self.max_gap_end = time.time()
            if gap > self.GAP_NOTE and len(self.gaps) < self.GAPS_KEPT:
                self.gaps.append((self.last_echo, now))
            _HoldConn.bins[int((now - _HoldConn.origin) * 100)] += 1
            fault_at = _HoldConn.fault_at
            if fault_at is not None and self.across is None and now > fault_at:
                self.across = (self.last_echo, now)
            self.recent.append(now)
            self.last_echo = now

    def learn_fault(self, at: float) -> None:
        """The fault's time is known now: look back over the recent echoes."""
        before = None
        for t in self.recent:
            if t <= at:
                before = t
            elif before is not None or len(self.recent) < self.recent.maxlen:
                self.across = (before if before is not None else t, t)
                return

    def eof_received(self):
        if not self.closing and self.outcome == "connected":
            self.outcome = "reset"
        return False

    def connection_lost(self, exc) -> None:
        if not self.closing and self.outcome == "connected":
            self.outcome = "reset"
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, now: float) -> None:
        self.transport.write(f"{self.i} {self.sent}\n".encode())
        self.sent += 1
        self.send_times.append(now)

    def _fail(self, outcome: str) -> None:
        if outcome == "stalled":  # the ongoing gap counts
            now = time.monotonic()
            if now - self.last_echo > self.max_gap:
                self.max_gap = now - self.last_echo
                self.max_gap_end = time.time()
            if len(self.gaps) < self.GAPS_KEPT:
                self.gaps.append((self.last_echo, now))
        self.outcome = outcome
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


async def hold(args) -> dict[str, Any]:
    """N long-lived connections; each writes a numbered line every --interval seconds (without
    waiting for the previous echo, like an application that keeps writing) and checks that the
    echoes come back in order.  Outcome per connection: ok, reset (RST or EOF from the far end),
    stalled (an echo more than --timeout overdue), mismatch (wrong echo), connect_failed.
    A connection's gap is the longest time between two consecutive echoes (the first measured
    from the start of the hold; for a stalled connection, up to when it was declared stalled);
    max_gap_ms is the largest over all connections."""
    dl = Deadline(args.deadline)
    loop = asyncio.get_running_loop()
    n = args.conns
    conns: list[_HoldConn | None] = [None] * n
    errors: dict[str, int] = {}
    t0 = time.monotonic()
    sem = asyncio.Semaphore(max(1, args.connect_concurrency))

    async def connect(i: int) -> None:
        async with sem:
            if dl.expired():
                _inc(errors, "connect:deadline")
                return
            try:
                async with asyncio.timeout(dl.op(args.timeout)):
                    _t, proto = await loop.create_connection(
                        lambda: _HoldConn(i), args.host, args.port
                    )
                conns[i] = proto
            except Exception as exc:  # noqa: BLE001 - counted
                _inc(errors, "connect:" + classify(exc))

    await asyncio.gather(*(connect(i) for i in range(n)))
    live = [c for c in conns if c is not None]
    connected = len(live)
    connect_seconds = time.monotonic() - t0
    if args.ready_file:
        # written whole under another name, then renamed: a reader never sees it half-written
        tmp = f"{args.ready_file}.tmp"
        with open(tmp, "w") as fh:
            json.dump({"connected": connected, "time": time.time()}, fh)
        os.replace(tmp, args.ready_file)

    start = time.monotonic()
    start_wall = time.time()
    _HoldConn.origin = start
    _HoldConn.bins.clear()
    _HoldConn.fault_at = None
    stop_at = min(start + args.seconds, start + max(0.0, dl.left() - args.timeout))
    for c in live:
        c.last_echo = start
    # the connections' first sends are spread over one interval; every connection has the same
    # interval, so a FIFO ordered by the next send time stays ordered
    spread = 0.0 if args.no_spread else args.interval / max(1, connected)
    queue: collections.deque[tuple[float, _HoldConn]] = collections.deque(
        (start + k * spread, c) for k, c in enumerate(live)
    )
    tick = min(0.005, args.interval / 4)
    next_check = start
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        while queue and queue[0][0] <= now:
            due, c = queue.popleft()
            if c.outcome != "connected":
                continue
            c.send(now)
            queue.append((max(due + args.interval, now), c))
        if now >= next_check:
            next_check = now + 0.1
            if args.fault_file and _HoldConn.fault_at is None:
                _HoldConn.fault_at = _read_fault(args.fault_file, start, start_wall)
                if _HoldConn.fault_at is not None:
                    for c in live:
                        c.learn_fault(_HoldConn.fault_at)
            for c in live:
                if c.outcome == "connected" and c.send_times and now - c.send_times[0] > args.timeout:
                    c._fail("stalled")
        await asyncio.sleep(min(tick, max(0.0, queue[0][0] - now)) if queue else tick)

    # drain: wait for the outstanding echoes (bounded by --timeout)
    drain_end = time.monotonic() + args.timeout
    while time.monotonic() < drain_end:
        if not any(c.outcome == "connected" and c.send_times for c in live):
            break
        await asyncio.sleep(0.01)
    for c in live:
        if c.outcome == "connected":
            if c.send_times:
                c._fail("stalled")
            else:
                c.outcome = "ok"
                c.closing = True
                c.transport.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            await asyncio.gather(*(c.lost for c in live))

    gaps = sorted(((c.max_gap * 1000, c) for c in live if c.recv), key=lambda x: x[0])
    values = [g for g, _ in gaps]

    def pct(p: float) -> float | None:
        if not values:
            return None
        return round(values[min(len(values) - 1, int(p * len(values)))], 1)

    outcomes = [c.outcome if c is not None else "connect_failed" for c in conns]
    count = {k: outcomes.count(k) for k in ("ok", "reset", "stalled", "mismatch", "connect_failed")}
    return {
        "conns": n,
        "connected": connected,
        **count,
        "sent": sum(c.sent for c in live),
        "echoes": sum(c.recv for c in live),
        "max_gap_ms": round(values[-1], 1) if values else None,
        "gap_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)},
        "worst": [
            {"conn": c.i, "gap_ms": round(g, 1), "ended_at": round(c.max_gap_end, 3)}
            for g, c in reversed(gaps[-5:])
        ],
        "errors": dict(sorted(errors.items())),
        "connect_seconds": round(connect_seconds, 3),
        "hold_started_at": round(start_wall, 3),
        "seconds": round(time.monotonic() - t0, 3),
        "fault": _fault_report(args, live, start, start_wall),
        "echo_bins_10ms": [_HoldConn.bins.get(k, 0) for k in range(max(_HoldConn.bins, default=-1) + 1)],
    }


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


def _read_fault(path: str, start: float, start_wall: float) -> float | None:
    """The fault's wall-clock time from the drill's file, as this process's monotonic time."""
    try:
        with open(path) as fh:
            return start + (float(json.load(fh)["at"]) - start_wall)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _fault_report(args, live, start: float, start_wall: float) -> dict[str, Any] | None:
    """Across the fault: when the first connection got an echo again (takeover_ms)
    and each connection's silence around it (from its last echo before the fault
    to its first after; a connection that never got one counts to the end)."""
    if not args.fault_file:
        return None
    at = _HoldConn.fault_at or _read_fault(args.fault_file, start, start_wall)
    if at is None:
        return None
    end = time.monotonic()
    # An echo the old master had already passed on can land just after the fault;
    # only a connection silent for longer than its own rhythm was cut, and its
    # first echo after that came through the new master.
    cut = max(2.5 * args.interval, 0.05)
    firsts, gaps = [], []
    for c in live:
        if c.across is not None:
            if c.across[1] - c.across[0] > cut:
                firsts.append(c.across[1])
            gaps.append((c.across[1] - c.across[0]) * 1000)
        else:
            gaps.append((end - c.last_echo) * 1000 if c.last_echo <= at else 0.0)
    gaps.sort()

    def pct(p: float) -> float | None:
        return round(gaps[min(len(gaps) - 1, int(p * len(gaps)))], 1) if gaps else None

    return {
        "at": start_wall + (at - start),
        "takeover_ms": round((min(firsts) - at) * 1000, 1) if firsts else None,
        "interrupted": len(firsts),
        "gap_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
    }


# ---------------------------------------------------------------------------------------------
# garbage


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _iphdr(src: bytes, dst: bytes, proto: int, payload_len: int, *, ihl: int = 5, tot_len=None,
           frag: int = 0, options: bytes = b"", ident: int | None = None) -> bytes:
    tot = tot_len if tot_len is not None else 20 + len(options) + payload_len
    hdr = struct.pack("!BBHHHBBH4s4s", (4 << 4) | (ihl & 0xF), 0, tot & 0xFFFF,
                      random.getrandbits(16) if ident is None else ident, frag, 64, proto, 0,
                      src, dst) + options
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]


def _l4_csum(src: bytes, dst: bytes, proto: int, seg: bytes) -> int:
    return _csum(src + dst + struct.pack("!BBH", 0, proto, len(seg)) + seg)


def _tcp(src: bytes, dst: bytes, sport: int, dport: int, flags: int, payload: bytes = b"",
         good_csum: bool = True, doff: int = 5) -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, random.getrandbits(32), random.getrandbits(32),
                      (doff & 0xF) << 4, flags, 65535, 0, 0) + payload
    c = _l4_csum(src, dst, 6, seg)
    if not good_csum:
        c = (c + 1 + random.randrange(0xFFFE)) & 0xFFFF or 1
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def _udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, good_csum: bool = True,
         length: int | None = None) -> bytes:
    ln = 8 + len(payload) if length is None else length
    seg = struct.pack("!HHHH", sport, dport, ln & 0xFFFF, 0) + payload
    c = _l4_csum(src, dst, 17, seg) or 0xFFFF
    if not good_csum:
        c = (c + 1 + random.randrange(0xFFFE)) & 0xFFFF or 1
    return seg[:6] + struct.pack("!H", c) + seg[8:]


def _sport() -> int:
    return random.randrange(20000, 60000)


def garbage_packet(kind: str, src: bytes, dst: bytes, port: int) -> bytes:
    R = random.randrange
    if kind == "truncated_ip":  # fewer than 20 bytes; IHL matches what is there (3 or 4 words)
        words = random.choice([3, 4])
        hdr = bytearray(_iphdr(src, dst, 6, 0, ihl=words))
        return bytes(hdr[: words * 4])
    if kind == "bad_ihl":  # IHL 0..4 on a full header + TCP SYN
        tcp = _tcp(src, dst, _sport(), port, 0x02)
        return _iphdr(src, dst, 6, len(tcp), ihl=R(0, 5)) + tcp
    if kind == "bad_total_length":  # total length beyond the buffer (see notes: kernel rewrites)
        tcp = _tcp(src, dst, _sport(), port, 0x02)
        return _iphdr(src, dst, 6, len(tcp), tot_len=20 + len(tcp) + R(1, 1400)) + tcp
    if kind == "bad_tcp_csum":
        flags = random.choice([0x02, 0x10, 0x18, 0x11, 0x04])
        payload = os.urandom(R(0, 64)) if flags & 0x08 else b""
        tcp = _tcp(src, dst, _sport(), port, flags, payload, good_csum=False)
        return _iphdr(src, dst, 6, len(tcp)) + tcp
    if kind == "bad_udp_csum":
        udp = _udp(src, dst, _sport(), port, os.urandom(R(1, 64)), good_csum=False)
        return _iphdr(src, dst, 17, len(udp)) + udp
    if kind == "truncated_tcp":  # valid IP header, TCP header cut short
        seg = _tcp(src, dst, _sport(), port, 0x02)[: R(1, 20)]
        return _iphdr(src, dst, 6, len(seg)) + seg
    if kind == "bad_tcp_doff":  # data offset < 5 or beyond the segment
        doff = random.choice([0, 1, 2, 3, 4, 15])
        tcp = _tcp(src, dst, _sport(), port, 0x02, doff=doff)
        return _iphdr(src, dst, 6, len(tcp)) + tcp
    if kind == "truncated_udp":
        seg = _udp(src, dst, _sport(), port, b"x")[: R(1, 8)]
        return _iphdr(src, dst, 17, len(seg)) + seg
    if kind == "bad_udp_len":  # UDP length field larger / smaller than the datagram
        payload = os.urandom(R(1, 64))
        ln = random.choice([R(0, 8), 8 + len(payload) + R(1, 1000)])
        udp = _udp(src, dst, _sport(), port, payload, length=ln)
        return _iphdr(src, dst, 17, len(udp)) + udp
    if kind == "fragment":  # first fragment (MF) or a later fragment of a TCP SYN to the port
        tcp = _tcp(src, dst, _sport(), port, 0x02, os.urandom(16))
        if random.random() < 0.5:
            return _iphdr(src, dst, 6, len(tcp), frag=0x2000) + tcp  # MF, offset 0
        return _iphdr(src, dst, 6, len(tcp), frag=R(1, 100)) + tcp  # offset > 0
    if kind == "ip_options":  # IHL 6..15 with random option bytes
        words = R(1, 11)
        opts = os.urandom(words * 4)
        tcp = _tcp(src, dst, _sport(), port, 0x02)
        return _iphdr(src, dst, 6, len(tcp), ihl=5 + words, options=opts) + tcp
    if kind == "random":  # a plain IPv4 header (lab addresses), random protocol and bytes
        proto = random.choice([6, 17, R(0, 256)])
        data = os.urandom(R(0, 1400))
        hdr = bytearray(_iphdr(src, dst, proto, len(data)))
        hdr[1] = R(0, 256)  # TOS
        hdr[6:8] = os.urandom(2)  # flags / fragment offset
        return bytes(hdr) + data
    raise UsageError(f"unknown garbage kind {kind!r}")


GARBAGE_KINDS = [
    "truncated_ip", "bad_ihl", "bad_total_length", "bad_tcp_csum", "bad_udp_csum",
    "truncated_tcp", "bad_tcp_doff", "truncated_udp", "bad_udp_len", "fragment", "ip_options",
    "random",
]


async def garbage(args) -> dict[str, Any]:
    dl = Deadline(args.deadline)
    kinds = GARBAGE_KINDS if args.kinds == "all" else [k.strip() for k in args.kinds.split(",")]
    for k in kinds:
        if k not in GARBAGE_KINDS:
            raise UsageError(f"unknown kind {k!r}; kinds: {', '.join(GARBAGE_KINDS)}")
    # the source address the kernel would use towards the target
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((args.target, args.port))
        src_ip = probe.getsockname()[0]
    finally:
        probe.close()
    check_host(src_ip)
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(args.target)
    if args.seed is not None:
        random.seed(args.seed)
    sent: dict[str, int] = {k: 0 for k in kinds}
    rejected: dict[str, dict[str, int]] = {}
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # implies IP_HDRINCL
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    gap = 1.0 / args.rate if args.rate > 0 else 0.0
    next_t = time.monotonic()
    t0 = next_t
    try:
        for k in kinds:
            for _ in range(args.count):
                if dl.expired():
                    break
                pkt = garbage_packet(k, src, dst, args.port)
                try:
                    s.sendto(pkt, (args.target, 0))
                    sent[k] += 1
                except OSError as exc:
                    _inc(rejected.setdefault(k, {}), classify(exc))
                if gap:
                    next_t += gap
                    delay = next_t - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
    finally:
        s.close()
    return {
        "target": args.target,
        "port": args.port,
        "source": src_ip,
        "count_per_kind": args.count,
        "sent": sent,
        "total_sent": sum(sent.values()),
        "rejected_by_kernel": rejected,
        "deadline_hit": dl.expired(),
        "seconds": round(time.monotonic() - t0, 3),
        "notes": [
            "with IP_HDRINCL the kernel rewrites total length and header checksum when IHL >= 5,"
            " so bad_total_length reaches the wire with a correct length; kernels that refuse"
            " IHL < 5 from a raw socket (EINVAL) count truncated_ip/bad_ihl in rejected_by_kernel",
            "a router drops malformed IP headers (truncated_ip, bad_ihl) before they reach a"
            " director; the L4 kinds pass the router",
        ],
    }


# ---------------------------------------------------------------------------------------------


def _positive(cap: float, kind=int):
    def conv(v: str):
        x = kind(v)
        if x <= 0 or x > cap:
            raise argparse.ArgumentTypeError(f"must be in (0, {cap}]")
        return x

    return conv


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m lab.client", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)

    def common(p, port_default=80, timeout=2.0, deadline=60.0):
        p.add_argument("--port", type=int, default=port_default)
        p.add_argument("--operator-target", action="store_true",
                       help="the host is the operator's own VIP (tandem drill against a "
                            "deployment): skip the lab-only address check")
        p.add_argument("--timeout", type=_positive(600.0, float), default=timeout,
                       help="seconds per operation (default %(default)s)")
        p.add_argument("--deadline", type=_positive(MAX_SECONDS, float), default=deadline,
                       help="overall seconds (default %(default)s)")

    p = sub.add_parser("tcp-probe", help="connect once to each host: open/refused/timeout")
    p.add_argument("--host", action="append", required=True)
    common(p, timeout=1.0, deadline=30.0)
    p.set_defaults(run=tcp_probe)

    for name, fn in (("tcp-whoami", tcp_whoami), ("udp-whoami", udp_whoami)):
        p = sub.add_parser(name, help=f"{name.split('-')[0].upper()} WHOAMI exchanges")
        p.add_argument("--host", required=True)
        p.add_argument("--count", type=_positive(MAX_COUNT), default=10)
        p.add_argument("--concurrency", type=_positive(MAX_CONNS), default=1)
        if name == "tcp-whoami":
            p.add_argument("--rate", type=_positive(1000.0, float),
                           help="start this many new connections a second, each on its own "
                                "(instead of --concurrency workers)")
            p.add_argument("--stop-file", help="with --rate: start no more once this file exists")
        common(p, timeout=2.0, deadline=60.0)
        p.set_defaults(run=fn)

    p = sub.add_parser("bulk", help="stream bytes through the echo and compare sha256")
    p.add_argument("--host", required=True)
    p.add_argument("--bytes", type=_positive(MAX_BYTES), default=100_000_000)
    p.add_argument("--chunk", type=_positive(16 << 20), default=256 << 10)
    p.add_argument("--newlines", action="store_true", help="allow newline bytes in the data")
    p.add_argument("--seed", type=int, default=1)
    common(p, timeout=10.0, deadline=300.0)
    p.set_defaults(run=bulk)

    p = sub.add_parser("hold", help="long-lived connections echoing numbered lines")
    p.add_argument("--host", required=True)
    p.add_argument("--conns", type=_positive(MAX_CONNS), default=100)
    p.add_argument("--seconds", type=_positive(MAX_SECONDS, float), default=10.0)
    p.add_argument("--interval", type=_positive(60.0, float), default=0.02)
    p.add_argument("--connect-concurrency", type=_positive(MAX_CONNS), default=200)
    p.add_argument("--ready-file", help="written (JSON) once all connections are open")
    p.add_argument("--no-spread", action="store_true",
                   help="every connection sends its first line at once (not spread over one interval)")
    p.add_argument("--fault-file", help="read at the end: {\"at\": wall time of a fault} to time the takeover")
    common(p, timeout=5.0, deadline=0.0)
    p.set_defaults(run=hold)

    p = sub.add_parser("udp-hold", help="long-lived UDP flows echoing numbered datagrams")
    p.add_argument("--host", required=True)
    p.add_argument("--flows", type=_positive(MAX_CONNS), default=10)
    p.add_argument("--seconds", type=_positive(MAX_SECONDS, float), default=10.0)
    p.add_argument("--interval", type=_positive(60.0, float), default=0.02)
    common(p, timeout=1.0, deadline=0.0)
    p.set_defaults(run=udp_hold)

    p = sub.add_parser("garbage", help="malformed IPv4 packets through a raw socket")
    p.add_argument("--target", required=True)
    p.add_argument("--count", type=_positive(MAX_GARBAGE_PER_KIND), default=10,
                   help="packets per kind")
    p.add_argument("--kinds", default="all", help=f"comma list of: {', '.join(GARBAGE_KINDS)}")
    p.add_argument("--rate", type=float, default=2000.0, help="packets per second (0: no pacing)")
    p.add_argument("--seed", type=int, default=None)
    common(p, timeout=1.0, deadline=60.0)
    p.set_defaults(run=garbage)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        for attr in ("host", "target"):
            v = getattr(args, attr, None)
            for h in v if isinstance(v, list) else [v] if v else []:
                if not (args.operator_target and args.mode in ("hold", "udp-hold")):
                    check_host(h)
        if args.mode == "hold" and not args.deadline:
            # default: connect phase + hold + margin
            args.deadline = min(MAX_SECONDS, args.seconds + 2 * args.timeout + 30.0)
        raise_nofile()
        run = asyncio.run
        try:
            import uvloop  # type: ignore

            run = uvloop.run
        except (ImportError, AttributeError):
            pass
        # last-resort bound on the whole process: SIGALRM (default action: terminate)
        signal.alarm(int(args.deadline) + 30)

        async def bounded():
            try:
                async with asyncio.timeout(args.deadline + 10):
                    return await args.run(args)
            except TimeoutError:
                return {"error": "overall deadline exceeded"}

        result = run(bounded())
        signal.alarm(0)
    except UsageError as exc:
        print(json.dumps({"mode": args.mode, "error": str(exc)}))
        return 2
    result = {"mode": args.mode, **result}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
