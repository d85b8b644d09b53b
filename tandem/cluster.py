"""Cluster mode in the node (`node.mode = "cluster"`, docs/cluster.md): the I/O half.

Every director of a cluster is active.  What one announces over BGP is decided by the
announcer core (ha/announce.py) from what the node knows; this module feeds it and
carries out its decisions:

- the inputs: the VIPs with a usable real server (the health checks' weights, as the
  scheduler sees them), the engine running (queue bound, rules installed), the node
  stopping, the peers' table arrived (or the start-up wait over), and the membership:
  a member is alive while sync hears it (within the pair's own liveness, three
  heartbeat intervals) and has not said it is leaving (a STATE whose role is
  `leaving`, sent by a stopping director before it withdraws); and the router's view
  (tandem/cluster_view.py: the peers it still routes via, read from BIRD);
- the actions: `Announce` goes to BIRD through ha/bird_io.py (the include, then
  `birdc configure`) in a worker thread, one at a time; a failure is counted and
  retried on the next step.  `AddAddresses`/`RemoveAddresses` (a dead peer's laddrs
  adopted or given back) need nothing on the host: every member's engine-mode laddrs
  are in the node's queue rule from the start (`rule_addresses`), and the synced
  entries carry the rewrite; a kernel-mode laddr's replies find the peer's flows in
  this node's conntrack (injected from sync, tandem/kernel_sync.py), which translates
  them before routing.  Announcing the /32 is all an adoption takes.

Membership, adoption and flows owned all come from `[cluster] members` (each director's
own laddr pool): a connection belongs to the director whose laddr it uses.

The runner steps every `CLUSTER_TICK` in a task of its own (the node's pump serves the
pair's role machine; this keeps the node's wiring to a small hook).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import deque
from typing import Any, Callable

from ha import announce as A
from ha.bird import host_prefix
from ha.bird_io import BirdAnnouncer
from tandem import cluster_status
from tandem.cluster_view import RouterView

log = logging.getLogger("tandem.cluster")

#: seconds between two steps of the announcer (membership and health are polled)
CLUSTER_TICK = 0.1
#: seconds after start during which a member never heard from counts as alive: a
#: director that has just started must not adopt (announce) the laddrs of peers it has
#: not heard yet only because their first heartbeat has not arrived
ADOPT_GRACE = 3.0
#: the role a director's STATE message says while it stops (peers stop counting it)
LEAVING = "leaving"
#: the role a running cluster director's STATE message says once its routes are up (its
#: BIRD took its laddrs and has a BGP session Established)
ACTIVE = "active"
#: the role it says before: an adopter of its laddrs keeps them meanwhile (ha/announce.py)
JOINING = "joining"
#: the role a draining director's STATE message says (peers never make it an adopter,
#: and keep its laddrs its own while they hear it)
DRAINING = "draining"
#: the role a director says while a tracked interface is down: it announces nothing, and
#: its peers adopt its laddrs as a leaving member's (not for good: it comes back joining)
FAULT = "fault"
#: every word a cluster director's STATE message says (`said`), in the order of its life
SAID = (JOINING, ACTIVE, DRAINING, FAULT, LEAVING)
#: what /status `role` says of a cluster director (it is neither master nor backup:
#: `cluster.state` says what it does)
MEMBER = "member"
#: seconds a stopping director keeps forwarding after its withdrawal: the router (and the
#: peer adopting its laddrs) switch within BGP's propagation, and packets still in flight
#: to it meanwhile find the engine and its rules in place, not a host that routes them back
STOP_SETTLE = 0.5


def membership_change(old: dict[str, tuple[str, ...]],
                      new: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """What a reload changed of the members (name -> laddr pool): the members added, removed,
    and kept with another laddr pool, each sorted."""
    return {"added": sorted(set(new) - set(old)),
            "removed": sorted(set(old) - set(new)),
            "laddrs changed": sorted(m for m in set(old) & set(new) if old[m] != new[m])}


class ClusterRunner:
    def __init__(self, cfg, engine, sync, *, clock: Callable[[], float] = time.monotonic,
                 bird: Any = None, engine_ok: Callable[[], bool] = lambda: True,
                 kernel_flows: Any = None,
                 on_adopt: Callable[[frozenset[str], bool], object] | None = None) -> None:
        cc = cfg.cluster
        self.name = cfg.name
        self.cfg = cc
        self.engine = engine
        self.sync = sync
        self.clock = clock
        self.engine_ok = engine_ok
        own = tuple(sorted({str(ipaddress.ip_address(a)) for s in cfg.services
                            for a in s.laddrs}))
        self.members: dict[str, tuple[str, ...]] = dict(cc.members) or {cfg.name: own}
        self.vips = tuple(sorted({s.vip for s in cfg.services}))
        #: the kernel-mode flows' view (tandem.kernel_mode.KernelFlows), or None
        self.kernel_flows = kernel_flows
        #: told of laddrs adopted (True) or given back (False): kernel sync then refreshes
        #: (or stops refreshing) their flows (tandem.kernel_sync.KernelSync.adopted)
        self.on_adopt = on_adopt
        self.bird = bird if bird is not None else BirdAnnouncer(cc.announce_include,
                                                                cc.bird_socket)
        self.announcer = A.Announcer()
        self.startup_sync_wait = cfg.ha.startup_sync_wait if cfg.ha else 0.0
        self._synced = sync is None                      # latched: the table arrived once
        if sync is not None and hasattr(sync, "want_every_peer_bulk"):
            sync.want_every_peer_bulk()
        self.started: float | None = None
        self.stopping = False
        self.draining = False
        #: the tracked interfaces ([interfaces] front, back) down now: it announces nothing
        self.links_down: tuple[str, ...] = ()
        self.applied: frozenset[str] | None = None      # what BIRD took last
        #: its own laddrs taken by BIRD with a BGP session up (once per life: a later session
        #: flap is for the router's BFD to see)
        self.in_place = False
        self.stats = dict.fromkeys(("steps", "announces", "bird_errors", "adopted", "given_back"), 0)
        self.last_error = ""
        self.changes: deque[dict] = deque(maxlen=20)
        self._leaving: set[tuple[str, int]] = set()      # (member, epoch) that said leaving
        self._added: dict[str, float] = {}               # member -> when a reload added it
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.view = RouterView(self.bird)

    # -- membership changes (a reload) -------------------------------------------------------

    def set_members(self, cc, now: float) -> list[str]:
        """`[cluster]` after a reload: the new membership (a director joined or left).  A
        member added is counted alive for ADOPT_GRACE from now until it is heard, as every
        member is after this director's own start: its node may still be starting, and its
        laddrs must not be adopted meanwhile.  The members added."""
        members = dict(cc.members) or {self.name: self.members.get(self.name, ())}
        change = membership_change(self.members, members)
        for m in change["added"]:
            self._added[m] = now
        for m in set(self._added) - set(members):
            del self._added[m]
        self.members, self.cfg = members, cc
        if any(change.values()):
            said = "; ".join(f"{k} {' '.join(v)}" for k, v in change.items() if v)
            log.info("cluster %s: members now %s (%s)", self.name, " ".join(sorted(members)),
                     said)
        return change["added"]

    # -- what the node's rules and status need ----------------------------------------------

    def rule_addresses(self) -> list[str]:
        """Every member's engine-mode laddrs: queued here too, so an adopted laddr needs no
        new rule.  Kernel-mode laddrs stay out: their replies must be tracked by conntrack,
        which holds the synced flows (injected) and translates them."""
        kernel = self.cfg.kernel_laddrs
        return sorted({a for pool in self.members.values() for a in pool if a not in kernel})

    def flows_owned(self) -> dict[str, int]:
        """Connections this node holds by the member whose laddr they use."""
        return cluster_status.flows_owned(self.members, self.engine, self.kernel_flows)

    # -- the inputs ----------------------------------------------------------------------

    def _peers(self) -> dict:
        return self.sync.receiver.peers if self.sync is not None else {}

    def membership(self, now: float) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        """(alive, leaving, joining): members heard within the sync's liveness and not
        leaving (this one always alive unless stopping); members that said they leave;
        members heard saying their routes are not up yet."""
        peers = self._peers()
        live_within = self.sync.live_within if self.sync is not None else 0.0
        grace = self.started is not None and now - self.started < ADOPT_GRACE
        routed = self.view.routed(self.members, self.name)
        alive, leaving, joining = {self.name}, set(), set()
        for m in self.members:
            if m == self.name:
                continue
            p = peers.get(m)
            if p is not None and p.state is not None and p.state.role == LEAVING:
                self._leaving.add((m, p.epoch))
            if p is not None and (m, p.epoch) in self._leaving:
                leaving.add(m)
                continue
            heard = p is not None and now - p.heard <= live_within
            if heard and p is not None and p.state is not None and p.state.role == FAULT:
                leaving.add(m)          # withdrawn (a link down): its laddrs adopted, for now
                continue
            if heard and p is not None and p.state is not None and p.state.role == DRAINING:
                leaving.add(m)          # never an adopter; its laddrs stay its own while heard
            if heard and p is not None and (p.state is None or p.state.role == JOINING):
                # its adopter keeps its laddrs until its routes are up; a new epoch heard
                # before its first STATE (sent before the epoch was proven, so dropped) is
                # one that has just started, so joining too: taken for active, its laddrs
                # were given back with no route to them
                joining.add(m)
            unheard = p is None or p.heard == float("-inf")
            fresh = grace or now - self._added.get(m, float("-inf")) < ADOPT_GRACE
            # the grace covers a member not heard yet, unless the router's view shows it
            # unrouted: nothing of it serves (its peers, past their grace, adopt it at once)
            if heard or (fresh and unheard and (routed is None or m in routed)):
                alive.add(m)
        if self.stopping or self.draining:
            leaving.add(self.name)
        return frozenset(alive), frozenset(leaving), frozenset(joining)

    def vips_up(self) -> frozenset[str]:
        from director.status import is_scheduled
        up = set()
        for svc in self.engine.services.values():
            if any(is_scheduled(svc, d) for d in svc.dests):
                up.add(svc.cfg.vip)
        return frozenset(up)

    def synced(self, now: float) -> bool:
        """Whether this director holds its peers' table (ha/announce.table_arrived: every
        live peer's bulk, or the start-up wait over); once true, true for good."""
        if self._synced:
            return True
        if self.started is None:
            return False
        live_within = self.sync.live_within
        peers = frozenset(self.members) - {self.name}
        heard = frozenset(m for m, p in self._peers().items()
                          if m in peers and now - p.heard <= live_within)
        if A.table_arrived(peers, heard, self.sync.answered_by(), now - self.started,
                           live_within, self.startup_sync_wait):
            self._synced = True
            self.sync.startup_done()
            log.info("cluster %s: the peers' table arrived (from %s)", self.name,
                     " ".join(sorted(self.sync.answered_by())) or "none: the start-up wait ended")
        return self._synced

    def inputs(self, now: float) -> A.Inputs:
        alive, leaving, joining = self.membership(now)
        if not self.in_place:
            # this director's own routes are not up yet (it says `joining`): it adopts
            # nothing, as its peers, hearing it say so, do not count it a candidate; else
            # it could announce a dead peer's laddr that they had given to another
            joining |= {self.name}
        return A.Inputs(name=self.name, vips=self.vips, laddrs=self.members,
                        vips_up=self.vips_up(), alive=alive, leaving=leaving, joining=joining,
                        node_ok=not self.links_down,
                        routed=self.view.routed(self.members, self.name),
                        engine_ok=self.engine_ok(), synced=self.synced(now),
                        stopping=self.stopping, draining=self.draining,
                        own_conns=self.flows_owned().get(self.name, 0),
                        drain_timeout=self.cfg.drain_timeout)

    # -- stepping --------------------------------------------------------------------------

    async def step(self) -> None:
        """Decide once and carry it out (BIRD in a worker thread; one step at a time)."""
        async with self._lock:
            now = self.clock()
            self.stats["steps"] += 1
            await self.view.refresh(now)
            for a in self.announcer.step(self.inputs(now), now):
                if isinstance(a, A.AddAddresses):
                    self.stats["adopted"] += len(a.addrs)
                    log.info("cluster %s: adopting %s (their owner is gone)", self.name,
                             " ".join(sorted(a.addrs)))
                    if self.on_adopt is not None:
                        self.on_adopt(a.addrs, True)
                elif isinstance(a, A.RemoveAddresses):
                    self.stats["given_back"] += len(a.addrs)
                    log.info("cluster %s: giving back %s", self.name, " ".join(sorted(a.addrs)))
                    if self.on_adopt is not None:
                        self.on_adopt(a.addrs, False)
                elif isinstance(a, A.Announce):
                    self.changes.append({"at": now, "prefixes": sorted(a.prefixes),
                                         "reason": a.reason})
                    log.info("cluster %s: announcing %s (%s)", self.name,
                             " ".join(sorted(a.prefixes)) or "nothing", a.reason)
            if self.applied != self.announcer.announced:
                await self._apply(self.announcer.announced)
            if not self.in_place and self._own_applied():
                check = getattr(self.bird, "established", None)
                if check is None or await asyncio.to_thread(check):
                    self.in_place = True
                    log.info("cluster %s: routes up (BGP session established): active",
                             self.name)
                    self.tell_peers()

    def _own_applied(self) -> bool:
        own = {host_prefix(a) for a in self.members.get(self.name, ())}
        return bool(own) and self.applied is not None and own <= self.applied

    async def _apply(self, prefixes: frozenset[str]) -> None:
        try:
            adopted = sorted(host_prefix(a) for a in self.announcer.adopted)
            await asyncio.to_thread(self.bird.apply, sorted(prefixes), adopted)
        except Exception as exc:   # noqa: BLE001 - BirdError, no birdc, a timeout: retried
            self.stats["bird_errors"] += 1
            self.last_error = str(exc)[:300]
            if self.stats["bird_errors"] <= 10 or self.stats["bird_errors"] % 100 == 0:
                log.warning("cluster %s: BIRD did not take the announcement (retrying): %s",
                            self.name, self.last_error)
            return
        self.applied = prefixes
        self.stats["announces"] += 1

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cluster %s: step failed", self.name)
            await asyncio.sleep(CLUSTER_TICK)

    # -- lifecycle ---------------------------------------------------------------------------

    def said(self) -> str:
        """What this director's STATE message says of it (the pair's role field)."""
        if self.stopping or self.links_down or self.draining:
            return LEAVING if self.stopping else FAULT if self.links_down else DRAINING
        return ACTIVE if self.in_place else JOINING

    def links_changed(self, down) -> None:
        """The tracked interfaces down now (the node's link check).  Any down: announce
        nothing (`node_ok`), say `fault` (the peers adopt its laddrs); all up: announce
        again, saying `joining` (the adopter keeps them) until its routes are up."""
        down = tuple(sorted(down))
        if down == self.links_down:
            return
        was, self.links_down = self.links_down, down
        if down:
            self.in_place = False
            log.warning("cluster %s: tracked interfaces down: %s: announcing nothing",
                        self.name, " ".join(down))
        else:
            log.info("cluster %s: tracked interfaces up again: %s", self.name, " ".join(was))
        self.tell_peers()

    def tell_peers(self) -> None:
        """Send this director's STATE now (and repeated): the node's one announce seam
        (tandem.node.Node._announce) says the same whenever the node's role changes."""
        if self.sync is not None:
            self.sync.announce(self.said(), 0, "", False)

    async def clear(self) -> None:
        """Announce nothing, first thing at the start: a node that died left its routes in
        the include (BIRD ran on, or started first).  A failure is retried by the step."""
        await self._apply(frozenset())

    async def start(self) -> None:
        """Once the engine runs (queue bound, rules in place) and sync has started."""
        self.started = self.clock()
        self.tell_peers()
        await self.step()
        self._task = asyncio.create_task(self._run(), name=f"cluster-{self.name}")

    async def stop(self) -> None:
        """Tell the peers this director leaves (they stop counting it and adopt its laddrs
        at once), then withdraw everything, before the engine goes."""
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.tell_peers()
        if self.sync is not None:
            self.sync.flush()
        had = bool(self.applied)
        await self.step()
        if had:
            await asyncio.sleep(STOP_SETTLE)

    async def drain(self, on: bool = True) -> dict:
        """Start (or cancel) a drain: the VIPs are withdrawn at once, the laddrs stay
        announced until this director's connections have ended or `drain_timeout` passed,
        then everything is withdrawn (ha/announce.py); peers are told (STATE `draining`),
        so none adopts its laddrs while they hear it.  The node keeps running, withdrawn,
        until it is stopped.  The status after the change."""
        if on != self.draining:
            self.draining = on
            log.info("cluster %s: %s", self.name, "draining" if on else "drain cancelled")
            self.tell_peers()
            await self.step()
        return self.status()

    def state(self) -> str:
        """One word for what this director does now (/status `cluster.state`)."""
        d = self.announcer.last
        reason = d.reason if d is not None else ""
        if self.stopping:
            return "stopping"
        if self.draining:
            return "drained" if not self.announcer.announced else "draining"
        for prefix, word in (("waiting", "joining"), ("isolated", "isolated"),
                             ("engine", "down"), ("node", "down")):
            if reason.startswith(prefix):
                return word
        if d is None:
            return "starting"
        return "active" if self.in_place else "joining"

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict:
        """/status `cluster` (tandem/cluster_status.py)."""
        return cluster_status.status(self)

def attach(node) -> ClusterRunner | None:
    """The node's cluster runner in node.mode = "cluster", else None (pair mode unchanged)."""
    cfg = node.cfg
    if cfg.mode != "cluster" or cfg.cluster is None:
        return None
    return ClusterRunner(cfg, node.engine, node.sync, clock=node.clock,
                         bird=getattr(node.edges, "bird", None),
                         engine_ok=lambda: node._phase == "running",
                         kernel_flows=node.kernel_path.flows,
                         on_adopt=node.kernel_sync.adopted if node.kernel_sync else None)
