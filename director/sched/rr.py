"""Round robin (ip_vs_rr.c): next usable dest after the last one chosen.

The kernel keeps a cursor on the last dest chosen (initially the list head)
and walks forward from it, wrapping, to the first dest that is not OVERLOAD
and has weight > 0; the cursor dest itself is the last one tried.  The cursor
survives dest changes: adding a dest or changing a weight leaves it alone,
and deleting the dest under the cursor moves it to that dest's predecessor
(ip_vs_rr_del_dest), so the walk carries on with the deleted dest's
successor.  Dests are matched by identity: the engine passes the same Dest
objects for the same real servers across updates.
"""
from director.sched import Flow, Scheduler, register, usable


@register
class RoundRobin(Scheduler):
    name = "rr"

    def __init__(self, flags=frozenset(), **kw):
        super().__init__(flags, **kw)
        self._last = None       # Dest under the cursor; None = list head

    def update(self, dests):
        old = self.dests
        super().update(dests)
        last = self._last
        if last is None:
            return
        alive = {id(d) for d in self.dests}
        if id(last) in alive:
            return
        # Deleted: step back to the nearest surviving predecessor (the head
        # if there is none), as repeated ip_vs_rr_del_dest calls would.
        idx = next((i for i, d in enumerate(old) if d is last), None)
        self._last = None
        if idx is not None:
            for d in reversed(old[:idx]):
                if id(d) in alive:
                    self._last = d
                    break

    def schedule(self, flow: Flow):
        dests = self.dests
        n = len(dests)
        last = self._last
        start = -1
        if last is not None:
            start = next((i for i, d in enumerate(dests) if d is last), -1)
        for step in range(1, n + 1):
            d = dests[(start + step) % n]
            if usable(d):
                self._last = d
                return d
        return None
