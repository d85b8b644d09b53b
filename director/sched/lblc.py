"""Locality-based least-connection (ip_vs_lblc.c).

A cache maps each destination IP (`flow.dst`, the packet's daddr) to a dest:

    if cache[daddr] exists and its dest is available, has weight > 0 and is
    not "overloaded":  reuse it
    else:  dest = weighted least-connection over all dests (WLC overhead,
           OVERLOAD and weight 0 skipped); cache[daddr] = dest

"Overloaded" here is lblc's own test, not the OVERLOAD flag:
active > weight AND some dest in the service has active*2 < weight.  As in
the kernel, the OVERLOAD flag of a *cached* dest is not checked, so a
cached dest keeps its clients until it trips that test or is quiesced or
removed.

Garbage collection (`LocalityTable`, shared with lblcr) follows the kernel's
timer, run lazily from `schedule` with time taken from `flow.now`: every 60 s
(CHECK_EXPIRE_INTERVAL) a check runs; every 30th check (COUNT_FOR_FULL_
EXPIRATION) is a full sweep dropping entries unused for `expiration`
(sysctl lblc_expiration, default 24 h); otherwise, only when the table holds
more than max_size = 16 * buckets entries, entries unused for 6 min
(ENTRY_TIMEOUT) are dropped bucket by bucket from a rover until
goal = min((entries - max_size) * 4/3, max_size / 2) are gone.  The table has
2^tab_bits buckets (CONFIG_IP_VS_LBLC_TAB_BITS, default 10), hashed with
(ntohl(addr_fold) * 2654435761) & mask; the bucket layout only matters for
the order in which the partial sweep visits entries.

The first check is due 60 s after the first scheduled flow (the kernel arms
the timer at service creation, which a scheduler here does not see).  If more
than MAX_CATCHUP checks are overdue (the clock jumped), only the last
MAX_CATCHUP of them are run; that keeps the cost bounded and can only leave
an entry in the cache longer than the kernel would, never drop one early.

Options: `expiration` and `tab_bits` (LOCALITY_OPTIONS; set per service as
`scheduler_options`).
"""
from __future__ import annotations

from director.sched import Flow, Scheduler, least, mult_hash, register
from schema.core import Key

CHECK_EXPIRE_INTERVAL = 60.0
ENTRY_TIMEOUT = 6 * 60.0
COUNT_FOR_FULL_EXPIRATION = 30
MAX_CATCHUP = 4 * COUNT_FOR_FULL_EXPIRATION

#: the options of lblc and lblcr (scheduler_options in the config)
LOCALITY_OPTIONS = (
    Key("expiration", float, 24 * 60 * 60.0, unit="s", above=0.0,
        doc="a full sweep drops entries unused this long (sysctl lblc_expiration)"),
    Key("tab_bits", int, 10, lo=1, hi=20,
        doc="the cache has 2^tab_bits buckets (CONFIG_IP_VS_LBLC_TAB_BITS)"),
)
DEFAULT_EXPIRATION = LOCALITY_OPTIONS[0].default
DEFAULT_TAB_BITS = LOCALITY_OPTIONS[1].default


def wlc_overhead(d) -> int:
    return d.overhead


class LocalityTable:
    """The lblc/lblcr per-service hash table of entries keyed by address.

    Entries are any objects with a `lastuse` attribute (seconds)."""

    def __init__(self, expiration: float = DEFAULT_EXPIRATION,
                 tab_bits: int = DEFAULT_TAB_BITS) -> None:
        if not 1 <= tab_bits <= 20:
            raise ValueError(f"tab_bits must be in 1..20, not {tab_bits}")
        self.size = 1 << tab_bits
        self.mask = self.size - 1
        self.expiration = float(expiration)
        self.buckets: list[dict] = [{} for _ in range(self.size)]
        self.entries = 0
        self.max_size = self.size * 16
        self.rover = 0
        self.counter = 1
        self.next_check: float | None = None

    def get(self, addr: bytes):
        return self.buckets[mult_hash(addr, self.mask)].get(addr)

    def add(self, addr: bytes, entry) -> None:
        b = self.buckets[mult_hash(addr, self.mask)]
        if addr not in b:
            self.entries += 1
        b[addr] = entry

    def __len__(self) -> int:
        return self.entries

    def __iter__(self):
        for b in self.buckets:
            yield from b.items()

    # --- garbage collection -------------------------------------------------

    def tick(self, now: float) -> None:
        """Run every periodic check that fell due up to `now`."""
        if self.next_check is None:
            self.next_check = now + CHECK_EXPIRE_INTERVAL
            return
        if now < self.next_check:
            return
        overdue = int((now - self.next_check) // CHECK_EXPIRE_INTERVAL) + 1
        if overdue > MAX_CATCHUP:
            self.next_check += (overdue - MAX_CATCHUP) * CHECK_EXPIRE_INTERVAL
        while now >= self.next_check:
            self.check_expire(self.next_check)
            self.next_check += CHECK_EXPIRE_INTERVAL

    def _sweep(self, limit: float, now: float, goal: int | None) -> None:
        """Walk the buckets from the rover dropping entries with
        lastuse + limit <= now; stop after a bucket once goal <= 0."""
        j = self.rover
        for _ in range(self.size):
            j = (j + 1) & self.mask
            b = self.buckets[j]
            if b:
                dead = [k for k, en in b.items() if not now < en.lastuse + limit]
                for k in dead:
                    del b[k]
                self.entries -= len(dead)
                if goal is not None:
                    goal -= len(dead)
            if goal is not None and goal <= 0:
                break
        self.rover = j

    def full_check(self, now: float) -> None:
        self._sweep(self.expiration, now, None)

    def check_expire(self, now: float) -> None:
        if self.counter % COUNT_FOR_FULL_EXPIRATION == 0:
            self.full_check(now)
            self.counter = 1
            return
        if self.entries <= self.max_size:
            self.counter += 1
            return
        goal = (self.entries - self.max_size) * 4 // 3
        if goal > self.max_size // 2:
            goal = self.max_size // 2
        self._sweep(ENTRY_TIMEOUT, now, goal)


class _Entry:
    __slots__ = ("dest", "lastuse")

    def __init__(self, dest, lastuse: float) -> None:
        self.dest = dest
        self.lastuse = lastuse


class _LocalityScheduler(Scheduler):
    """What lblc and lblcr share: the table, liveness and lblc's overload test."""
    option_keys = LOCALITY_OPTIONS

    def __init__(self, flags=frozenset(), **kw):
        super().__init__(flags, **kw)
        self.table = LocalityTable(
            float(self.options["expiration"]), self.options["tab_bits"])
        self._alive: set[int] = set()

    def update(self, dests):
        super().update(dests)
        self._alive = {id(d) for d in self.dests}

    def available(self, d) -> bool:
        """IP_VS_DEST_F_AVAILABLE: still one of the service's dests."""
        return d.available and id(d) in self._alive

    def is_overloaded(self, d) -> bool:
        """lblc/lblcr is_overloaded: active > weight and some dest of the
        service has active*2 < weight (a less loaded server exists)."""
        if d.active > d.weight:
            for x in self.dests:
                if x.active * 2 < x.weight:
                    return True
        return False


@register
class LocalityBasedLeastConnection(_LocalityScheduler):
    name = "lblc"

    def schedule(self, flow: Flow):
        table = self.table
        now = flow.now
        table.tick(now)
        en = table.get(flow.dst)
        if en is not None:
            en.lastuse = now
            d = en.dest
            if self.available(d) and d.weight > 0 and not self.is_overloaded(d):
                return d
        d = least(self.dests, wlc_overhead)
        if d is None:
            return None
        if en is None:
            table.add(flow.dst, _Entry(d, now))
        else:
            en.dest = d
        return d
