"""Background work of one loop turn in slices, the urgent work first before each slice.

A sans-IO core: the clock is injected; the work is two callables.  The node's loop
serves two kinds of work on one thread in kernel mode (tandem.kernel_mode): the queued
first packets and the conntrack events.  A queued SYN waits in the kernel until its
verdict, and with a fixed number of connections in flight (a client's pool, the bench's
32) the connections/s is that number over their latency, so a SYN must never wait long
behind bookkeeping.  The events (the view, the schedulers' counts, sync) change nothing
if they are applied a few milliseconds later.  uvloop calls the readers of one poll one
after the other, so before this a SYN that arrived while the event reader worked through
its 64 datagrams (~0.7 ms at ~11 us an event on an idle core, several ms when the node
shares its core) waited for all of them; now it waits for one slice at most.

`Slices.run(step)` calls `urgent()` and then `step(slice_size)` (at most that many units
of background work; it returns whether more waits) until nothing waits, `limit` units
are done, or `budget` seconds have passed since the turn began.  Whatever is left waits
for the next turn, so the turn stays bounded (the same loop sends VRRP adverts, and its
timers run between turns).
"""
from __future__ import annotations

from typing import Callable

#: units of background work (event datagrams) between two looks at the urgent work: at
#: ~11-15 us a datagram a queued packet waits at most ~0.25 ms behind events
SLICE = 16
#: units of background work per turn at most (director.ct_events.BATCH, one read's worth)
LIMIT = 64
#: seconds of background work per turn at most, by the injected clock; then the turn ends
#: and the loop's timers and other readers run before the rest
BUDGET = 0.002


class Slices:
    __slots__ = ("urgent", "clock", "slice_size", "limit", "budget", "stats")

    def __init__(self, urgent: Callable[[], object], clock: Callable[[], float],
                 slice_size: int = SLICE, limit: int = LIMIT, budget: float = BUDGET) -> None:
        if slice_size < 1 or limit < 1 or budget <= 0:
            raise ValueError("slice_size and limit must be >= 1 and budget > 0")
        self.urgent = urgent
        self.clock = clock
        self.slice_size = slice_size
        self.limit = limit
        self.budget = budget
        #: turns that ended on the budget or the limit with work left (it waits for the
        #: next turn), and slices run
        self.stats = {"turns_cut": 0, "slices": 0}

    def run(self, step: Callable[[int], bool]) -> bool:
        """One turn; True when background work is left for the next one."""
        start = self.clock()
        done = 0
        while True:
            self.urgent()
            n = min(self.slice_size, self.limit - done)
            more = step(n)
            self.stats["slices"] += 1
            done += n
            if not more:
                return False
            if done >= self.limit or self.clock() - start >= self.budget:
                self.stats["turns_cut"] += 1
                return True
