"""Overflow connection (ip_vs_ovf.c).

Among dests that are not OVERLOAD, have weight != 0 and have
active <= weight, the highest weight wins (first in list on ties).  The
weight is thus a cap on active connections, beyond which traffic overflows to
the next-heaviest dest.  Only active connections count, so the kernel notes
it may not suit UDP.
"""
from director.sched import Flow, Scheduler, register


@register
class Overflow(Scheduler):
    name = "ovf"

    def schedule(self, flow: Flow):
        best = None
        hw = 0
        for d in self.dests:
            w = d.weight
            if d.overloaded or d.active > w or w == 0:
                continue
            if best is None or w > hw:
                best, hw = d, w
        return best
