"""The announcer: which prefixes a director of a cluster announces over BGP, and when.

In cluster mode (docs/cluster.md) every director is active and the router's ECMP spreads
the VIPs' traffic over the directors that announce them.  Announcing is how a director
says "send me traffic", so this core decides it from what the node knows, sans I/O:
``decide(inputs, now, drain_since)`` is a pure function, and ``Announcer`` remembers
what is announced and turns a change into ordered actions for the adapter
(ha/bird_io.py writes BIRD's include and reconfigures it; the wiring adds and removes
the addresses).

What is announced, first matching row wins:

==============================  ===============================================
node stopping                   nothing
node unhealthy (links, fault)   nothing
engine not running              nothing
table not synced yet (joining)  nothing: a director that announced before it
                                held its peers' entries would reset their flows
isolated: no router view, and   nothing: the others count it dead and adopt its
it hears fewer than half of     laddrs; announcing them too would split them
the members not leaving
draining, connections left and  its laddrs (and adopted ones) only: replies of
drain_timeout not passed        its connections keep coming back; no new flows
draining, otherwise             nothing
otherwise                       every VIP with a usable real server, and its
                                laddrs (and adopted ones) whatever the VIPs
==============================  ===============================================

Laddrs stay announced while a VIP is down: a peer may forward a flow with this
director's laddr (the flow's owner), and its replies must come back here.

**Adopting a dead peer's laddrs.**  A peer's replies keep returning to its laddrs after
it dies; the survivors take them over, each laddr by exactly one of them:
``adopter(laddr, candidates)`` is rendezvous (highest random weight) hashing over the
directors alive and not leaving, with BLAKE2b, so every director computes the same
adopter from the same membership, a laddr moves only when its adopter goes, and a dead
director's laddrs spread over the survivors.

**Who is dead: the router decides** (``Inputs.routed``).  Sync silence alone cannot
tell a dead peer from one cut off from sync but still routed, still announcing its
laddrs; adopting those would split their replies (split brain).  The router can: it
routes a peer's laddrs via that peer only while its BGP session (and BFD) is up.  So
with the router's view, a peer is dead when it is silent on sync *and* the router no
longer routes its laddrs via it; a silent peer still routed keeps its laddrs, and counts
as a candidate (every side of a sync partition then computes the same adopters).
Without a view (BIRD not answering, no import table configured, this director's own
session down) the quorum rule decides instead (``quorum``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping

from ha.bird import host_prefix


@dataclass(frozen=True)
class Inputs:
    """What the node knows now (the wiring builds one per change)."""
    name: str                                   # this director
    vips: tuple[str, ...]                       # the cluster's VIPs
    laddrs: Mapping[str, tuple[str, ...]]       # every director's own laddr pool, by name
    vips_up: frozenset[str] = frozenset()       # VIPs with at least one usable real server
    alive: frozenset[str] = frozenset()         # directors heard from (this one included)
    leaving: frozenset[str] = frozenset()       # directors draining or stopping (never adopt)
    #: peers the router still routes their own laddrs via (its view, through BGP); None:
    #: no view, so sync silence is weighed by the quorum rule (`quorum`)
    routed: frozenset[str] | None = None
    #: directors whose routes are not up yet: peers heard saying `joining`, and this one
    #: until its own BGP session is up (it adopts nothing meanwhile: `adopted`)
    joining: frozenset[str] = frozenset()
    node_ok: bool = True                        # tracked links up, no fault
    engine_ok: bool = True                      # the data plane runs (queue bound / rules loaded)
    synced: bool = True                         # the peers' table has arrived (or the wait ended)
    draining: bool = False
    stopping: bool = False
    own_conns: int = 0                          # connections this director owns (drain end)
    drain_timeout: float = 300.0                # s: a drain ends by then whatever is left


@dataclass(frozen=True)
class Decision:
    prefixes: frozenset[str]        # host prefixes to announce
    adopted: frozenset[str]         # peers' laddrs this director takes over
    reason: str                     # for the log and /status
    deadline: float | None = None   # when to decide again without a new input (drain end)


def _weight(name: str, laddr: str) -> bytes:
    return hashlib.blake2b(f"{laddr}|{name}".encode(), digest_size=8,
                           key=b"tandem/adopter/v1").digest()


def adopter(laddr: str, candidates: frozenset[str] | set[str]) -> str | None:
    """The director that takes over `laddr`: the candidate of highest weight
    H(laddr, name) (ties impossible in practice; then the larger name)."""
    if not candidates:
        return None
    return max(candidates, key=lambda n: (_weight(n, laddr), n))


def quorum(inp: Inputs) -> str:
    """"majority", "half" or "minority": how many of the members that have not said they
    leave (this one included) this director hears.

    Sync silence cannot tell "I am cut off" from "the others died".  A director that
    counts a peer dead adopts its laddrs; were that peer in fact cut off from sync only,
    still routed and announcing them, the router would split their replies between the
    two while each holds only its own new flows (split brain).  So only a majority adopts,
    a minority withdraws everything (the majority takes its laddrs over), and an exact
    half keeps its own and adopts nothing (the other half does the same): whatever the
    partition, every laddr is announced from one side only.  The price: a cluster that
    lost half or more of its members to crashes stops adopting, and with less than half
    left goes dark (docs/cluster.md, section 6).  A member that said it leaves does not
    count once silent (a draining one still heard counts, as heard), so graceful stops and
    drains never cost the quorum.  Used only without the router's view (`Inputs.routed`)."""
    heard_now = inp.alive | {inp.name}
    counted = (set(inp.laddrs) | {inp.name}) - (inp.leaving - heard_now)   # draining counts
    heard = len(counted & heard_now)
    if 2 * heard > len(counted):
        return "majority"
    return "half" if 2 * heard == len(counted) else "minority"


def table_arrived(peers: frozenset[str], heard: frozenset[str], answered: frozenset[str],
                  waited: float, settle: float, wait: float) -> bool:
    """Whether a starting director holds its peers' table, so may announce: every peer of
    the membership has answered its request with a whole bulk; or, once `settle` seconds
    have passed since the start (long enough for every live peer to have been heard: the
    sync's liveness), every peer heard has, and one at least; or `wait` is over (the
    start-up wait: peers that answer late fill their entries in as they come).  Waiting for
    the first bulk only, a flow of a peer whose bulk had not arrived yet was scheduled as
    new when it reached the director."""
    if waited >= wait or (peers and peers <= answered):
        return True
    return waited >= settle and bool(answered) and heard <= answered


def adopted(inp: Inputs, held: frozenset[str] = frozenset()) -> frozenset[str]:
    """The laddrs of dead peers that this director takes over, and of those it `held`
    (adopted until now) the ones whose owner is back but still joining: an owner that has
    just started announces its laddrs once it holds the table, but the router routes them
    to it only once its BGP session is up, which can take seconds after its BIRD started;
    given back before that, the laddr's replies would have no route at all.  Kept, both
    announce it for a moment, which is harmless: both hold its flows (section 6 of
    docs/cluster.md).  A joining member is never a candidate, this director included: a
    director adopts nothing until its own routes are up (its peers, hearing it say
    `joining`, have given its candidates' laddrs to others meanwhile).

    With the router's view (`Inputs.routed`), a peer is dead when it is silent and not
    routed, or said it leaves (a stop, a fault: it withdraws its routes itself, so its
    laddrs are taken at once, not a moment after its withdrawal reached the router), and a
    silent peer still routed is a candidate; without it, only a director that hears a
    majority adopts (`quorum`)."""
    routed = inp.routed if inp.routed is not None else frozenset()
    candidates = (inp.alive | routed | {inp.name}) - inp.leaving - inp.joining
    if inp.name not in candidates or (inp.routed is None and quorum(inp) != "majority"):
        return frozenset()
    dead = frozenset(a for peer, pool in inp.laddrs.items()
                     if peer != inp.name and peer not in inp.alive
                     and (peer in inp.leaving or peer not in routed)
                     for a in pool if adopter(a, candidates) == inp.name)
    back = frozenset(a for peer in inp.joining & inp.alive if peer != inp.name
                     for a in inp.laddrs.get(peer, ()) if a in held)
    return dead | back


def decide(inp: Inputs, now: float, drain_since: float | None = None,
           held: frozenset[str] = frozenset()) -> Decision:
    """What to announce now (the table in the module's docstring); `held`: the laddrs
    adopted until now (see `adopted`)."""
    nothing: frozenset[str] = frozenset()
    for cond, reason in ((inp.stopping, "stopping"), (not inp.node_ok, "node unhealthy"),
                         (not inp.engine_ok, "engine not running"),
                         (not inp.synced, "waiting for the peers' table"),
                         (inp.routed is None and quorum(inp) == "minority",
                          "isolated: a minority of the members heard")):
        if cond:
            return Decision(nothing, nothing, reason)
    adopt = nothing if inp.draining else adopted(inp, held)
    laddrs = frozenset(map(host_prefix, (*inp.laddrs.get(inp.name, ()), *adopt)))
    if inp.draining:
        since = now if drain_since is None else drain_since
        end = since + inp.drain_timeout
        if inp.own_conns <= 0:
            return Decision(nothing, nothing, "drained")
        if now >= end:
            return Decision(nothing, nothing, f"drain timeout ({inp.own_conns} connections left)")
        return Decision(laddrs, nothing, f"draining ({inp.own_conns} connections left)", end)
    vips = frozenset(host_prefix(v) for v in inp.vips if v in inp.vips_up)
    down = len(inp.vips) - len(vips)
    reason = "healthy" if not down else f"healthy, {down} VIP(s) without a real server"
    return Decision(vips | laddrs, adopt, reason)


@dataclass(frozen=True)
class AddAddresses:
    """Put these (adopted) addresses on the node's interface: before they are announced."""
    addrs: frozenset[str]


@dataclass(frozen=True)
class Announce:
    """Announce exactly these prefixes from now on (the include, then a reconfigure)."""
    prefixes: frozenset[str]
    reason: str


@dataclass(frozen=True)
class RemoveAddresses:
    """Take these addresses off the interface: after they are withdrawn."""
    addrs: frozenset[str]


@dataclass
class Announcer:
    """What is announced and adopted now; `step` returns what to do to reach the decision."""
    announced: frozenset[str] = frozenset()
    adopted: frozenset[str] = frozenset()
    drain_since: float | None = None
    last: Decision | None = field(default=None, repr=False)

    def step(self, inp: Inputs, now: float) -> list:
        if inp.draining and self.drain_since is None:
            self.drain_since = now
        elif not inp.draining:
            self.drain_since = None
        d = decide(inp, now, self.drain_since, self.adopted)
        self.last = d
        actions: list = []
        gained, lost = d.adopted - self.adopted, self.adopted - d.adopted
        if gained:
            actions.append(AddAddresses(gained))
        if d.prefixes != self.announced:
            actions.append(Announce(d.prefixes, d.reason))
        if lost:
            actions.append(RemoveAddresses(lost))
        self.announced, self.adopted = d.prefixes, d.adopted
        return actions

    def deadline(self) -> float | None:
        """When to step again with no new input (a drain's end), if ever."""
        return self.last.deadline if self.last else None
