"""Least-connection (ip_vs_lc.c).

The lowest overhead (active*256 + inactive) wins; weight is ignored except
that weight 0 (quiesced) and OVERLOAD dests are skipped.  Strict `<`, so the
first dest in list order wins ties.  (The kernel comment still says
`activeconns<<5`; the code uses ip_vs_dest_conn_overhead, which is `<<8`.)
"""
from director.sched import Flow, Scheduler, register


@register
class LeastConnection(Scheduler):
    name = "lc"

    def schedule(self, flow: Flow):
        least = None
        loh = 0
        for d in self.dests:
            if d.overloaded or d.weight == 0:
                continue
            doh = d.overhead
            if least is None or doh < loh:
                least, loh = d, doh
        return least
