"""Never queue (ip_vs_nq.c).

Walk the list skipping OVERLOAD and weight-0 dests; the first dest with no
active connection is returned at once.  Otherwise it is SED: minimise
(active + 1) / weight by cross-multiplication, first in list wins ties.
"""
from director.sched import Flow, Scheduler, register


@register
class NeverQueue(Scheduler):
    name = "nq"

    def schedule(self, flow: Flow):
        least = None
        loh = 0
        for d in self.dests:
            if d.overloaded or not d.weight:
                continue
            doh = d.active + 1
            if d.active == 0:
                return d
            if least is None or loh * d.weight > doh * least.weight:
                least, loh = d, doh
        return least
