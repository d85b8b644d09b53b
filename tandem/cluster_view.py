"""The router's view in the node (cluster mode): which peers the router still routes via.

A peer silent on sync may be dead or only cut off from sync; the router knows which: it
routes a peer's laddrs via that peer only while its BGP session (and BFD) is up.  Every
director's BIRD keeps the tandem routes the router sends back in its session's import
table, and ha/bird_io.py `routed_owners` reads from it the host prefixes the router
routes via their owners.  ``RouterView`` reads it at most every ROUTER_VIEW_POLL (in a
worker thread: two short birdc calls) and turns it into the announcer's input
(ha/announce.py `Inputs.routed`): the peers with at least one own laddr routed.  None
when BIRD gives no view (no session Established, no import table, not answering): the
announcer then weighs sync silence by its quorum, as before the view existed.

A view is trusted only once it has shown a peer routed (``proven``): a router that does
not send the directors its routes back (its config lacks it) gives every director an
empty view, which would make every silent peer dead, and a sync partition would then
split every laddr.  The price: a director that starts while every peer is down uses the
quorum rule until it has seen one routed.
"""
from __future__ import annotations

import asyncio
from typing import Any, Mapping

from ha.bird import host_prefix

#: seconds between two reads of the router's view from BIRD
ROUTER_VIEW_POLL = 0.25
#: seconds the last view read stands while BIRD answers without one: a birdc call that
#: failed once must not switch a director to the quorum rule (and so dark, were it the
#: last one left)
ROUTER_VIEW_HOLD = 3.0


class RouterView:
    def __init__(self, bird: Any) -> None:
        self.read = getattr(bird, "routed_owners", None)     # None: an adapter without it
        #: host prefixes the router routes via their owners (None: no view), when read
        self.owners: frozenset[str] | None = None
        self.at = self.next = float("-inf")
        self.failures = 0
        self.proven = False                                   # a peer seen routed once

    async def refresh(self, now: float) -> None:
        """Read the view once ROUTER_VIEW_POLL has passed since the last read; an answer
        without one keeps the last view for ROUTER_VIEW_HOLD."""
        if self.read is None or now < self.next:
            return
        self.next = now + ROUTER_VIEW_POLL
        try:
            view = await asyncio.to_thread(self.read)
        except Exception:   # noqa: BLE001 - no birdc, a timeout: no view this time
            view = None
        if view is not None:
            self.owners, self.at = view, now
            return
        self.failures += 1
        if now - self.at > ROUTER_VIEW_HOLD:
            self.owners = None

    def routed(self, members: Mapping[str, tuple[str, ...]], me: str) -> frozenset[str] | None:
        """The peers of `members` (name -> laddr pool) the router routes at least one of
        their own laddrs via; None without a view, or before one has shown a peer routed."""
        if self.owners is None:
            return None
        owners = self.owners
        routed = frozenset(m for m, pool in members.items()
                           if m != me and any(host_prefix(a) in owners for a in pool))
        self.proven = self.proven or bool(routed)
        return routed if self.proven else None
