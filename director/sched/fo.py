"""Weighted failover (ip_vs_fo.c).

The non-OVERLOAD dest with the highest weight (> 0).  Strict `>`, so the
first dest in list order wins ties.
"""
from director.sched import Flow, Scheduler, register


@register
class WeightedFailover(Scheduler):
    name = "fo"

    def schedule(self, flow: Flow):
        best = None
        hw = 0
        for d in self.dests:
            if not d.overloaded and d.weight > hw:
                best, hw = d, d.weight
        return best
