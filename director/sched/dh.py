"""Destination hashing (ip_vs_dh.c).

A static table of 2^tab_bits buckets (CONFIG_IP_VS_DH_TAB_BITS, default 8,
so 256) filled round-robin over the dest list, one bucket per dest per pass
(weights are not used for filling).  The bucket of a flow is
(ntohl(daddr_fold) * 2654435761) & mask, IPv6 folded by XORing its four
words, where daddr is the packet's destination address (`flow.dst`).  No
fallback: if the bucket's dest is not available, has weight <= 0 or is
OVERLOAD, the connection is refused (None).

Option: `tab_bits` (declared in `option_keys`; set per service as `scheduler_options`).
"""
from director.sched import Flow, Scheduler, mult_hash, register
from schema.core import Key


@register
class DestinationHashing(Scheduler):
    name = "dh"
    option_keys = (Key("tab_bits", int, 8, lo=4, hi=20,
                       doc="the table has 2^tab_bits buckets (CONFIG_IP_VS_DH_TAB_BITS)"),)

    def __init__(self, flags=frozenset(), **kw):
        super().__init__(flags, **kw)
        bits = self.options["tab_bits"]
        if not 4 <= bits <= 20:
            raise ValueError(f"dh tab_bits must be in 4..20, not {bits}")
        self.size = 1 << bits
        self.mask = self.size - 1
        self.table: list = [None] * self.size

    def update(self, dests):
        super().update(dests)
        n = len(self.dests)
        if not n:
            self.table = [None] * self.size
        else:
            self.table = [self.dests[i % n] for i in range(self.size)]

    def schedule(self, flow: Flow):
        d = self.table[mult_hash(flow.dst, self.mask)]
        if d is None or not d.available or d.weight <= 0 or d.overloaded:
            return None
        return d
