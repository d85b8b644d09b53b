"""Weighted round robin (ip_vs_wrr.c), transcribed with the kernel's state.

State (struct ip_vs_wrr_mark): `cl` the cursor (a list position, or the head),
`cw` the current weight, `mw` the max weight, `di` the step.

- di = gcd of all weights > 0 (1 if there are none);
  mw = max weight - (di - 1), so the last pass runs with cw = 1 and also
  catches dests whose weight fell below di.
- schedule: from the dest after the cursor, pick the first dest that is not
  OVERLOAD and has weight >= cw.  At the end of the list cw -= di; when
  cw <= 0 it restarts at mw.  The walk gives up (None) once every dest has
  been checked with cw = 1, or if mw == 0 (all weights 0).
- any dest change (add/del/update): the cursor goes back to the head, di and
  mw are recomputed, then cw = mw if cw > mw or cw == 0, otherwise, if
  di > 1, cw = (cw // di) * di + 1.

For weights 4:3:2 the cycle is A A B A B C A B C.
"""
from math import gcd

from director.sched import Flow, Scheduler, register

_HEAD = -1


@register
class WeightedRoundRobin(Scheduler):
    name = "wrr"

    def __init__(self, flags=frozenset(), **kw):
        super().__init__(flags, **kw)
        self.cl = _HEAD
        self.di, self.mw = self._weights()
        self.cw = self.mw

    def _weights(self) -> tuple[int, int]:
        g = 0
        mx = 0
        for d in self.dests:
            w = d.weight
            if w > 0:
                g = gcd(w, g) if g > 0 else w
            if w > mx:
                mx = w
        di = g or 1
        return di, mx - (di - 1)

    def update(self, dests):
        super().update(dests)
        self.cl = _HEAD
        self.di, self.mw = self._weights()
        if self.cw > self.mw or not self.cw:
            self.cw = self.mw
        elif self.di > 1:
            self.cw = (self.cw // self.di) * self.di + 1

    def schedule(self, flow: Flow):
        dests = self.dests
        n = len(dests)
        pos = self.cl
        if self.mw == 0:
            return None
        last = pos
        stop = None
        last_pass = restarted = False
        while True:
            for i in range(pos + 1, n):
                d = dests[i]
                if not d.overloaded and d.weight >= self.cw:
                    self.cl = i
                    return d
                if i == stop:
                    self.cl = i
                    return None
            pos = _HEAD
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                # Stop if the last pass (cw = 1) already covered every dest:
                # either we started it mid-list, or we started at the head.
                if last_pass or last == _HEAD:
                    self.cl = _HEAD
                    return None
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last != _HEAD:
                # The first cw = 1 traversal only covered dests after `last`;
                # now do those up to and including `last`.
                stop = last
