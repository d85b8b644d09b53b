"""Locality-based least-connection with replication (ip_vs_lblcr.c).

Like lblc, but each destination IP (`flow.dst`) maps to a *set* of dests:

    if no entry:  n = WLC over all dests; entry = {n}
    else:
        n = WLC minimum within the set (OVERLOAD skipped; first candidate
            must have weight > 0 and be available)
        if |set| > 1 and now - set.lastmod > expiration:
            drop the set's weighted most-loaded dest (weight > 0)
        if n is None or n is lblc-overloaded
                (active > weight and some dest has active*2 < weight):
            n = WLC over all dests; add n to the set
    return n

The set keeps the kernel's order (new members go to the front, list_add_rcu),
which decides ties; lastmod changes when a member is added or removed.  The
table, its hash and its garbage collection are lblc's (`LocalityTable`), with
sysctl lblcr_expiration (default 24 h) as `expiration`.

Options: `expiration` and `tab_bits`, as lblc (set per service as `scheduler_options`).
"""
from __future__ import annotations

from director.sched import Flow, least, register
from director.sched.lblc import _LocalityScheduler, wlc_overhead


class _SetEntry:
    __slots__ = ("dests", "lastmod", "lastuse")

    def __init__(self, dest, now: float) -> None:
        self.dests = [dest]
        self.lastmod = now
        self.lastuse = now


@register
class LocalityBasedLeastConnectionReplication(_LocalityScheduler):
    name = "lblcr"

    def set_min(self, members):
        """ip_vs_dest_set_min."""
        least_d = None
        loh = 0
        for d in members:
            if d.overloaded:
                continue
            if least_d is None:
                if d.weight > 0 and self.available(d):
                    least_d, loh = d, d.overhead
                continue
            doh = d.overhead
            if loh * d.weight > doh * least_d.weight and self.available(d):
                least_d, loh = d, doh
        return least_d

    @staticmethod
    def set_max(members):
        """ip_vs_dest_set_max (no OVERLOAD or availability test)."""
        most = None
        moh = 0
        for d in members:
            if most is None:
                if d.weight > 0:
                    most, moh = d, d.overhead
                continue
            doh = d.overhead
            if moh * d.weight < doh * most.weight and d.weight > 0:
                most, moh = d, doh
        return most

    def schedule(self, flow: Flow):
        table = self.table
        now = flow.now
        table.tick(now)
        en = table.get(flow.dst)
        if en is not None:
            en.lastuse = now
            d = self.set_min(en.dests)
            if len(en.dests) > 1 and now > en.lastmod + table.expiration:
                m = self.set_max(en.dests)
                if m is not None:
                    en.dests = [x for x in en.dests if x is not m]
                    en.lastmod = now
            if d is not None and not self.is_overloaded(d):
                return d
            d = least(self.dests, wlc_overhead)
            if d is None:
                return None
            if not any(x is d for x in en.dests):
                en.dests.insert(0, d)
                en.lastmod = now
            return d
        d = least(self.dests, wlc_overhead)
        if d is None:
            return None
        table.add(flow.dst, _SetEntry(d, now))
        return d
