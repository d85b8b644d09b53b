"""When each kernel flow's time in conntrack runs out, as the view last heard it.

conntrack expires an entry when its timeout passes, but says so (the DESTROY event) only
when its garbage collection reaps it, tens of seconds later; until then the view counted
the flow inactive on its real server (lc/wlc read that) and in /status.  Every event and
dump entry carries the time the entry has left (CTA_TIMEOUT), so the view knows each
flow's deadline as of its last event.  Packets without an event (data on an ESTABLISHED
flow, a UDP flow's datagrams) push the kernel's deadline on unseen, so a deadline passed
is a question for the kernel, not an answer: the node asks for the flows that are due (a
conntrack GET, which also reaps an entry that has expired, so its DESTROY comes at once),
retires those gone and re-arms the others from the time they have left
(director.kernel_flows.KernelFlows.checked).

`FlowDeadlines` is the timer wheel of that, sans-IO with time injected: one slot per TICK
seconds.  A flow's deadline is a field of its row in the shared proto.flow_table
(VDEADLINE: its slot + 1, 0 when not armed), so it costs no object per flow, and each
slot is an array of the keys filed in it (8 bytes a key; the long keys of IPv6 flows go
to a list).  A later deadline only rewrites the field (the key is filed again when its
old slot comes due), an earlier one files the key again, as director.timer does for the
engine's table; a filing whose slot no longer matches the field is stale and skipped.  No
task or timer per flow.

A key stamped is first kept with those stamped since the last `due` (`_young`), and filed
in its slot there only if its flow still has a deadline: a new flow's NEW event gives it its
SYN timeout, and its ESTABLISHED (which keeps no deadline) comes milliseconds later.  Filed
at once, that first deadline stayed in its slot, stale, for the whole SYN timeout: at 1M
flows opened within it, 8 MB held and 168 bytes a flow by RSS (bench.kmem) against 146.
"""
from __future__ import annotations

import math
from array import array
from itertools import chain
from typing import Iterable

from proto.flow_table import DEADLINE_BITS, F32, VDEADLINE, VIEW

#: s, the width of a slot: a flow is looked at no later than this after its deadline
TICK = 1.0
_SHORT = 1 << 63            # keys below this fit an array('q') slot


class FlowDeadlines:
    """Deadlines of the view's rows (`rows`: proto.flow_table.FlowTable.rows)."""

    def __init__(self, rows: dict[int, int], start: float = 0.0) -> None:
        self.rows = rows
        self._short: dict[int, array] = {}
        self._long: dict[int, list[int]] = {}
        self._young: list[int] = []     # stamped since the last due(), not filed yet
        self._next = math.floor(start / TICK)

    def _file(self, key: int, slot: int) -> None:
        if 0 <= key < _SHORT:
            a = self._short.get(slot)
            if a is None:
                a = self._short[slot] = array("q")
            a.append(key)
        else:
            self._long.setdefault(slot, []).append(key)

    def arm(self, key: int, deadline: float) -> None:
        """The view's flow `key` runs out at `deadline` (seconds, the clock of `due`)."""
        row = self.rows.get(key, 0)
        if row & VIEW:
            self.rows[key] = self.stamp(key, row, deadline)

    def stamp(self, key: int, row: int, deadline: float) -> int:
        """`row` (flow `key`'s, about to be stored) with `deadline` in it, filed: one
        store per event instead of two (each store makes a new int)."""
        slot = max(math.ceil(deadline / TICK), self._next)
        had = row >> VDEADLINE & F32
        if not had or had - 1 > slot:
            self._young.append(key)
        return row & ~DEADLINE_BITS | (slot + 1) << VDEADLINE

    def _place_young(self) -> None:
        """File the keys stamped since the last look, each at its deadline as its row says
        now; one whose flow lost its deadline meanwhile (the view let go of it, or it
        reached a lasting state) is dropped.  Before any slot is looked at, and no later
        than the next tick, so a deadline is never missed (stamp made it >= _next)."""
        if not self._young:
            return
        rows, nxt = self.rows, self._next
        for key in dict.fromkeys(self._young):
            row = rows.get(key, 0)
            at = (row >> VDEADLINE & F32) - 1
            if row & VIEW and at >= 0:
                self._file(key, max(at, nxt))
        self._young = []

    def armed(self, key: int) -> bool:
        return bool(self.rows.get(key, 0) & DEADLINE_BITS)

    def filed(self) -> int:
        """Filings held (live and stale): what the wheel costs beyond the rows."""
        return (sum(map(len, self._short.values())) + sum(map(len, self._long.values()))
                + len(self._young))

    def due(self, now: float, limit: int | None = None) -> list[int]:
        """The keys whose deadline is <= now, each disarmed (arm it again to keep it).
        With `limit`, at most that many filings are looked at (live and stale): a slot
        not finished keeps the rest for the next call, so a slot of 50k keys costs a
        few ms a call over several calls, not 120 ms in one."""
        target = math.floor(now / TICK)
        self._place_young()
        if target < self._next:
            return []
        visit: Iterable[int]
        if target - self._next > len(self._short) + len(self._long):
            visit = sorted(s for s in self._short.keys() | self._long.keys() if s <= target)
        else:
            visit = range(self._next, target + 1)
        left = limit if limit is not None else -1
        self._next = target + 1
        rows, out = self.rows, []
        for slot in visit:
            if left == 0:
                self._next = slot               # this slot and those after: next call
                break
            keys, n, rest = self._take(slot, left)
            if rest:
                self._next = slot
            if left > 0:
                left -= n
            for key in keys:
                row = rows.get(key, 0)
                at = (row >> VDEADLINE & F32) - 1
                if not row & VIEW or at < slot:
                    continue                    # gone, disarmed, or a stale filing
                if at <= target:
                    rows[key] = row & ~DEADLINE_BITS
                    out.append(key)
                else:
                    self._file(key, at)
            if rest:
                break
        return out

    def _take(self, slot: int, n: int) -> tuple[Iterable[int], int, bool]:
        """Up to `n` filings of `slot` (all when n < 0), taken out of it: them, how many,
        and whether some stay filed there."""
        short, long = self._short.get(slot), self._long.get(slot)
        size = len(short or ()) + len(long or ())
        if n < 0 or size <= n:
            self._short.pop(slot, None)
            self._long.pop(slot, None)
            return chain(short or (), long or ()), size, False
        taken: list[int] = []
        for held, filed in ((short, self._short), (long, self._long)):
            if held and n > len(taken):
                m = n - len(taken)
                taken += held[-m:]              # from the end: no copy of what stays
                del held[-m:]
                if not held:
                    del filed[slot]
        return taken, len(taken), True
