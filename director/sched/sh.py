"""Source hashing (ip_vs_sh.c), with the sh-fallback and sh-port flags.

A table of 2^tab_bits buckets (CONFIG_IP_VS_SH_TAB_BITS, default 8, so 256)
is tiled with the dest list, each dest repeated `weight` times ("don't move to
next dest until filling weight"); a dest with weight <= 1, including a
quiesced weight-0 dest, gets one bucket per pass.  The bucket of a flow is

    (offset + (sport + ntohl(saddr_fold)) * 2654435761) & mask

with sport = 0 unless `sh-port`, offset = 0 for the first try, and IPv6
folded by XORing its four words.  The table depends only on the dest list
and weights, so every director with the same config picks the same dest.

If the bucket's dest has weight <= 0 or is OVERLOAD, the connection is
refused, unless `sh-fallback`: then the kernel re-hashes with
offset = (ihash + i) % size for i in 0..size-1 and takes the first available
dest, which spreads the failed dest's clients deterministically over the
others.

(The packet's source address is the client in FULLNAT; for an "inverse"
packet, which tandem never schedules, the kernel uses daddr.)

Option: `tab_bits` (declared in `option_keys`; set per service as `scheduler_options`).
"""
from director.sched import GOLDEN_PRIME, Flow, Scheduler, fold_addr, hashed_pick, register
from schema.core import Key

FALLBACK = "sh-fallback"   # IP_VS_SVC_F_SCHED1
PORT = "sh-port"           # IP_VS_SVC_F_SCHED2


@register
class SourceHashing(Scheduler):
    name = "sh"
    option_keys = (Key("tab_bits", int, 8, lo=4, hi=20,
                       doc="the table has 2^tab_bits buckets (CONFIG_IP_VS_SH_TAB_BITS)"),)
    known_flags = frozenset({FALLBACK, PORT})

    def __init__(self, flags=frozenset(), **kw):
        super().__init__(flags, **kw)
        bits = self.options["tab_bits"]
        if not 4 <= bits <= 20:
            raise ValueError(f"sh tab_bits must be in 4..20, not {bits}")
        self.size = 1 << bits
        self.mask = self.size - 1
        self.table: list = [None] * self.size
        self.fallback = FALLBACK in self.flags
        self.use_port = PORT in self.flags

    def update(self, dests):
        super().update(dests)
        table: list = [None] * self.size
        dl = self.dests
        if dl:
            p = 0
            count = 0
            for i in range(self.size):
                d = dl[p]
                table[i] = d
                count += 1
                if count >= d.weight:
                    p = (p + 1) % len(dl)
                    count = 0
        self.table = table

    def bucket(self, flow: Flow, offset: int = 0) -> int:
        port = flow.sport if self.use_port else 0
        key = (port + fold_addr(flow.src)) & 0xFFFFFFFF
        return (offset + key * GOLDEN_PRIME) & self.mask

    def schedule(self, flow: Flow):
        return hashed_pick(self.table, self.bucket, flow, self.size, self.fallback, self.dests)