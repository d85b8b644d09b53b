"""Shortest expected delay (ip_vs_sed.c).

Minimises (active + 1) / weight by cross-multiplication; inactive
connections are ignored.  The first non-OVERLOAD dest with weight > 0 starts
as the candidate and is replaced only on a strict `>`, so the first dest in
list order wins ties.
"""
from director.sched import Flow, Scheduler, least, register


def sed_overhead(d) -> int:
    """ip_vs_sed_dest_overhead / ip_vs_nq_dest_overhead: activeconns + 1."""
    return d.active + 1


@register
class ShortestExpectedDelay(Scheduler):
    name = "sed"

    def schedule(self, flow: Flow):
        return least(self.dests, sed_overhead)
