"""When each kernel flow's time in conntrack runs out, as the view last heard it.

conntrack expires an entry when its timeout passes, but says so (the DESTROY event) only
when its garbage collection reaps it, tens of seconds later (the lab measured 35-40 s);
until then the view counted the flow inactive on its real server (lc/wlc read that) and
in /status.  Every event and dump entry carries the time the entry has left
(CTA_TIMEOUT), so the view knows each flow's deadline as of its last event.  Packets
without an event (data on an ESTABLISHED flow, a UDP flow's datagrams) push the kernel's
deadline on unseen, so a deadline passed is a question for the kernel, not an answer:
the node asks for the flows that are due (a conntrack GET, which also reaps an entry
that has expired, so its DESTROY comes at once), retires those gone and re-arms the
others from the time they have left (director.kernel_flows.KernelFlows.checked).

`FlowDeadlines` is the timer wheel of that, sans-IO with time injected: one slot per
TICK seconds, each a list of flow keys (proto.flow_table's int keys), and one dict key ->
(deadline, slot).  A later deadline only rewrites the dict (the key is filed again when
its old slot comes due), an earlier one files the key again, as director.timer does for
the engine's table; no task or timer per flow.
"""
from __future__ import annotations

import math
from typing import Iterable

#: s, the width of a slot: a flow is looked at no later than this after its deadline
TICK = 1.0


class FlowDeadlines:
    def __init__(self, start: float = 0.0) -> None:
        #: key -> (deadline, the slot it is filed in)
        self.deadlines: dict[int, tuple[float, int]] = {}
        self._slots: dict[int, list[int]] = {}
        self._next = math.floor(start / TICK)

    def __len__(self) -> int:
        return len(self.deadlines)

    def _file(self, key: int, deadline: float) -> None:
        slot = max(math.ceil(deadline / TICK), self._next)
        self.deadlines[key] = (deadline, slot)
        self._slots.setdefault(slot, []).append(key)

    def arm(self, key: int, deadline: float) -> None:
        """Flow `key` runs out at `deadline` (seconds, the clock of `due`)."""
        had = self.deadlines.get(key)
        if had is not None and math.ceil(deadline / TICK) >= had[1]:
            self.deadlines[key] = (deadline, had[1])     # re-filed when its slot comes due
        else:
            self._file(key, deadline)

    def disarm(self, key: int) -> None:
        self.deadlines.pop(key, None)

    def deadline(self, key: int) -> float | None:
        had = self.deadlines.get(key)
        return None if had is None else had[0]

    def due(self, now: float) -> list[int]:
        """The keys whose deadline is <= now, each taken out (arm it again to keep it)."""
        target = math.floor(now / TICK)
        if target < self._next:
            return []
        slots = self._slots
        visit: Iterable[int]
        if target - self._next > len(slots):
            visit = sorted(s for s in slots if s <= target)
        else:
            visit = range(self._next, target + 1)
        self._next = target + 1
        out = []
        for slot in visit:
            for key in slots.pop(slot, ()):
                had = self.deadlines.get(key)
                if had is None or had[1] != slot:
                    continue                    # disarmed, or filed again earlier
                if had[0] <= now:
                    del self.deadlines[key]
                    out.append(key)
                else:
                    self._file(key, had[0])
        return out
