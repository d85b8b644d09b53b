"""hold: long-lived TCP connections echoing numbered lines, for failover drills."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import time
from typing import Any

from .across import fault_reports, read_faults, step_of
from .common import Deadline, classify, inc


class HoldConn(asyncio.Protocol):
    """One held connection: lines are written by the scheduler in hold(), echoes are checked
    here as they arrive (no task, future or timer per message)."""

    __slots__ = ("i", "transport", "buf", "sent", "recv", "send_times", "last_echo", "max_gap",
                 "max_gap_end", "outcome", "closing", "t_start", "lost", "gaps", "after_gaps",
                 "recent", "lport")

    #: gaps longer than this are remembered (start, end), for takeover timing
    GAP_NOTE = 0.05
    GAPS_KEPT = 16
    #: echoes per 10 ms since the hold started, shared by all connections (for plots)
    bins: collections.Counter = collections.Counter()
    origin = 0.0
    #: monotonic times of the faults, as the drill announces them (--fault-file): one for
    #: a drill, one per step for a drill's sequence
    fault_ats: list[float] = []

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
        # per fault: the longest silence that ended after it and before the next one (from
        # the echo before it to the one that ended it), whether it spans the fault (a
        # takeover) or comes later (a failback, when the restored node preempts)
        self.after_gaps: dict[int, tuple[float, float]] = {}
        # echo times of the last seconds: the fault's time arrives after the fault,
        # so the silences since are found here, not guessed
        self.recent: collections.deque[float] = collections.deque(maxlen=256)

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.lport = transport.get_extra_info("sockname")[1]

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
            HoldConn.bins[int((now - HoldConn.origin) * 100)] += 1
            if HoldConn.fault_ats and now > HoldConn.fault_ats[0]:
                self._after(self.last_echo, now)
            self.recent.append(now)
            self.last_echo = now

    def _after(self, since: float, now: float) -> None:
        """A silence from `since` to `now` ended after a fault: the last one before `now`."""
        k = step_of(HoldConn.fault_ats, now)
        gap = self.after_gaps.get(k)
        if gap is None or now - since > gap[1] - gap[0]:
            self.after_gaps[k] = (since, now)

    def learn_fault(self, at: float) -> None:
        """A fault's time is known now (the latest): look back over the recent echoes."""
        # with every echo since the start still in `recent`, the first one's silence
        # began at the start of the hold; otherwise it is unknown and skipped
        prev = HoldConn.origin if len(self.recent) < (self.recent.maxlen or 0) else None
        for t in self.recent:
            if prev is not None and t > at:
                self._after(prev, t)
            prev = t

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
            if HoldConn.fault_ats and now > HoldConn.fault_ats[0]:
                self._after(self.last_echo, now)
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
    conns: list[HoldConn | None] = [None] * n
    errors: dict[str, int] = {}
    t0 = time.monotonic()
    sem = asyncio.Semaphore(max(1, args.connect_concurrency))

    async def connect(i: int) -> None:
        async with sem:
            if dl.expired():
                inc(errors, "connect:deadline")
                return
            try:
                async with asyncio.timeout(dl.op(args.timeout)):
                    _t, proto = await loop.create_connection(
                        lambda: HoldConn(i), args.host, args.port
                    )
                conns[i] = proto
            except Exception as exc:  # noqa: BLE001 - counted
                inc(errors, "connect:" + classify(exc))

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
    HoldConn.origin = start
    HoldConn.bins.clear()
    HoldConn.fault_ats = []
    stop_at = min(start + args.seconds, start + max(0.0, dl.left() - args.timeout))
    for c in live:
        c.last_echo = start
    # the connections' first sends are spread over one interval; every connection has the same
    # interval, so a FIFO ordered by the next send time stays ordered
    spread = 0.0 if args.no_spread else args.interval / max(1, connected)
    queue: collections.deque[tuple[float, HoldConn]] = collections.deque(
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
            if args.stop_file and os.path.exists(args.stop_file):
                break
            if args.fault_file:
                ats = read_faults(args.fault_file, start, start_wall)
                for at in ats[len(HoldConn.fault_ats):]:     # each new one, in order
                    HoldConn.fault_ats.append(at)
                    for c in live:
                        c.learn_fault(at)
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
        "lost_ports": {o: sorted(c.lport for c in live if c.outcome == o)[:200]
                       for o in ("reset", "stalled", "mismatch") if o in outcomes},
        "connect_seconds": round(connect_seconds, 3),
        "hold_started_at": round(start_wall, 3),
        "seconds": round(time.monotonic() - t0, 3),
        **fault_reports(args, live, start, start_wall, HoldConn.fault_ats),
        "echo_bins_10ms": [HoldConn.bins.get(k, 0) for k in range(max(HoldConn.bins, default=-1) + 1)],
    }
