"""Repairing the kernel-flows view after lost events, in bounded slices (sans-IO).

The view (director.kernel_flows) is rebuilt from a dump of the kernel's table when the
event socket overran.  A burst leaves tens of thousands of entries to decode, reconcile
and hand to connection sync, and the events read meanwhile to apply afterwards: done in
one go, that is a few hundred milliseconds on the event loop that also sends the VRRP
adverts, and 100 ms adverts then come late enough for the backup to take over.  So one
repair is a `Repair` fed as the dump is read, that does its work in `step()`s of at most
`budget` seconds (by the injected clock); the caller yields to its loop between steps.

    r = Repair(flows, clock)
    r.add(entries)          # the dump, a slice at a time as it is read
    r.hold(messages)        # events read while the repair runs, in order
    r.dump_done()           # the dump's end was read (or r.dump_failed(): keep the view)
    while not r.step(): yield to the loop
    # True: every held event applied; from now on events go to the view directly

What stays exact: the view is the old one until the whole dump is in, then it is swapped
whole (KernelFlows.resync_steps); the held events are applied after it, in the order they
were read; the repair ends in the same step that applies the last held event, so an
event is either held or applied to the new view, never both or neither.
"""
from __future__ import annotations

import collections
from typing import Callable, Generator, Iterable

from director.kernel_flows import KernelFlows
from proto import ctnetlink as ct

#: s of repair work per step at most (then the loop runs the timers and readers waiting)
SLICE = 0.002
#: held events applied between two looks at the clock
EVENTS_PER_CHECK = 32


class Repair:
    def __init__(self, flows: KernelFlows, clock: Callable[[], float],
                 budget: float = SLICE) -> None:
        self.flows = flows
        self.clock = clock
        self.budget = budget
        self.entries: list[ct.Conntrack] = []
        self.held: collections.deque[ct.Message] = collections.deque()
        #: flows the dump added, removed or changed (None until the reconcile ended)
        self.repaired: int | None = None
        self.failed = False
        self.steps = 0
        self._work: Generator[None, None, int] | None = None
        self._replaying = False

    def add(self, entries: Iterable[ct.Conntrack]) -> None:
        """More of the dump, as read."""
        self.entries += entries

    def restart(self) -> None:
        """The dump is taken again (the kernel flagged it interrupted): forget what came."""
        self.entries = []

    def hold(self, msgs: Iterable[ct.Message]) -> None:
        """Events read while the repair runs: applied after the dump, in this order."""
        self.held.extend(msgs)

    def dump_done(self) -> None:
        """The whole dump is in: reconcile it with the view (in the next steps)."""
        self._work = self.flows.resync_steps(self.entries, now=self.clock())

    def dump_failed(self) -> None:
        """No dump: the held events go to the old view, which still needs a repair."""
        self.failed = True
        self.entries = []
        self.flows.needs_resync = True
        self._replaying = True

    @property
    def waiting_for_dump(self) -> bool:
        return self._work is None and not self._replaying

    def step(self) -> bool:
        """Work for at most `budget` seconds (one unit of work more at most); True when the
        repair is over: the dump reconciled and every held event applied."""
        self.steps += 1
        end = self.clock() + self.budget
        while True:
            if self._work is not None:
                try:
                    next(self._work)
                except StopIteration as done:
                    self.repaired = done.value
                    self._work = None
                    self.entries = []
                    self._replaying = True
            elif self._replaying:
                held, apply, now = self.held, self.flows.apply, self.clock()
                for _ in range(min(EVENTS_PER_CHECK, len(held))):
                    apply(held.popleft(), now)
                if not held:
                    return True
            else:
                return False            # the dump's next part has not been read yet
            if self.clock() >= end:
                return False
