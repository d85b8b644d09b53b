"""Weighted least-connection (ip_vs_wlc.c), ipvsadm's default.

Minimises overhead/weight with overhead = active*256 + inactive.
"""
from director.sched import Flow, Scheduler, least, register


@register
class WeightedLeastConnection(Scheduler):
    name = "wlc"

    def schedule(self, flow: Flow):
        return least(self.dests, lambda d: d.overhead)
