"""The node's part in the pair, the I/O half: sync wiring, and the runner that carries out the
role machine's actions (ha/role.py decides what happens on a role change, and in which order;
docs/architecture.md, "Failover order"; why: docs/failover-pitfalls.md, 2, 5 and 7).

The runner executes a batch of actions in order.  Only address changes are awaited (a netlink
round trip in a worker thread); gratuitous ARP bursts run in the background and are cancelled by
the next address change, and notify hooks run one after another in a chain of their own (never
two at once, never holding up the next change).  So a state change never waits behind GARPs or
a slow hook.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

from director import scripts
from director.persist import Template
from ha import role as R
from ha.takeover import Takeover, TakeoverConfig
from ha.vrrp import StateChange
from proto.sync import SyncEntry

log = logging.getLogger("tandem.ha")

#: how long a stopping node waits for a notify hook still running
HOOK_DRAIN_TIMEOUT = 5.0
#: a peer heard from (DATA or HEARTBEAT) within this many of our heartbeat intervals is live,
#: as VRRP's master-down interval is three adverts (an idle sender heartbeats every interval)
PEER_LIVE_HEARTBEATS = 3


def interface_addresses(ifname: str) -> list[str]:
    """The addresses on an interface, primary first (netlink).  In a worker thread: pyroute2's
    IPRoute runs an event loop of its own, which cannot start inside the node's (the node
    builds its sync link, and so calls this, on its loop, before the election starts)."""
    from concurrent.futures import ThreadPoolExecutor

    from pyroute2 import IPRoute

    def lookup() -> list[str]:
        with IPRoute() as ipr:
            links = ipr.link_lookup(ifname=ifname)
            if not links:
                return []
            return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=links[0])]
    with ThreadPoolExecutor(1) as worker:
        return worker.submit(lookup).result()


def engine_source(engine) -> tuple[Callable[[], list], Callable[[Any, float], SyncEntry | None]]:
    """(snapshot, to_entry) for a director Engine, what a SyncSender's bulk walks: a list of
    the connections taken at its start, each converted when it is sent, skipping those that
    have gone meanwhile."""
    def snapshot() -> list:
        return list(engine.templates.by_key.values()) + list(engine.table)

    def to_entry(conn, now: float) -> SyncEntry | None:
        if not conn.alive:
            return None
        if isinstance(conn, Template):
            return SyncEntry.from_template(conn, now)
        return SyncEntry.from_conn(conn, now, engine.timeout_of(conn))

    return snapshot, to_entry


class SyncLink:
    """Connection sync to and from the peer, wired to the engine."""

    def __init__(self, cfg, engine, addresses_of: Callable[[str], list[str]] | None = None) -> None:
        from syncd.config import with_local_address
        from syncd.policy import SyncPolicy, make_hook
        from syncd.receiver import SyncReceiver, engine_apply, engine_apply_bulk
        from syncd.sender import SyncSender
        from syncd.transport import SyncTransport
        # an unset unicast bind is the back interface's address, never the wildcard
        scfg = with_local_address(cfg.ha.sync, cfg.ha.back_if, addresses_of or interface_addresses)
        snapshot, to_entry = engine_source(engine)
        self.sender = SyncSender(scfg, cfg.name, snapshot=snapshot, to_entry=to_entry)
        self.receiver = SyncReceiver(scfg, cfg.name, None, engine_apply(engine),
                                     apply_bulk=engine_apply_bulk(engine))
        self.transport = SyncTransport(scfg, self.sender, self.receiver, ifname=cfg.ha.back_if)
        engine.sync_hook = make_hook(SyncPolicy.from_config(scfg), engine, self.transport.queue,
                                     self.transport.queue_packed)
        self.started = 0.0
        self.overrides: Any = None          # syncd.overrides.OverrideLink, once carried

    async def start(self) -> None:
        from syncd.config import socket_error
        self.started = time.monotonic()
        try:
            await self.transport.start()
        except OSError as exc:          # the config's addresses, on this host: say which key
            raise socket_error(self.transport.cfg, exc) from None

    @property
    def bulk_done(self) -> bool:
        """Whether a bulk resync answering this node's own request has completed
        (an older or replayed bulk does not count)."""
        return self.receiver.resync_complete

    def answered_by(self) -> frozenset[str]:
        """The peers whose bulk answering this node's start-up request came whole."""
        return self.receiver.answered_by()

    def want_every_peer_bulk(self) -> None:
        """A cluster: the start-up wants every peer's table, until `startup_done`."""
        self.receiver.every_peer_bulk = True

    def startup_done(self) -> None:
        self.receiver.startup_done()

    def carry_overrides(self, entries: Callable[[], list[list]],
                        apply: Callable[[str, list[list]], None]) -> None:
        """Carry the operator's overrides to and from the peer (syncd.overrides)."""
        from syncd.overrides import OverrideLink
        self.transport.overrides = self.overrides = OverrideLink(
            self.receiver, entries=entries, apply=apply,
            interval=self.transport.cfg.overrides_interval)

    def send_overrides(self, items: list[list]) -> None:
        self.transport.send_overrides(items)

    def set_peers(self, peers) -> None:
        """A cluster's unicast peers after a reload (SyncTransport.set_peers)."""
        self.transport.set_peers([tuple(p) for p in peers])

    def flush(self) -> int:
        """Every pending entry to the peer now; the datagrams sent."""
        return self.transport.flush()

    def close(self) -> None:
        self.transport.close()

    def last_heard(self) -> tuple[str, float] | None:
        """(name, seconds ago) of the peer heard from (DATA or HEARTBEAT) most recently."""
        heard = {name: p.heard for name, p in self.receiver.peers.items()}
        if not heard:
            return None
        name = max(heard, key=heard.__getitem__)
        return name, self.transport.clock() - heard[name]

    @property
    def live_within(self) -> float:
        """Seconds: a peer heard within this long is live."""
        return PEER_LIVE_HEARTBEATS * self.sender.cfg.heartbeat_interval

    def announce(self, role: str, priority: int, address: str, resigned: bool) -> None:
        """Tell the peer what this node is in the pair (a STATE message, now and repeated)."""
        self.transport.state(role, priority, address, resigned)

    def on_peer_state(self, callback: Callable[[str, Any], None]) -> None:
        """callback(node, STATE message) for each fresh STATE from the peer."""
        self.receiver.on_state = callback

    def peer_state(self) -> Any:
        """The peer's latest STATE message (role, priority, address, resigned), or None."""
        peer = self._peer()
        return peer[1].state if peer is not None else None

    def _peer(self) -> tuple[str, Any] | None:
        """(node, receiver's record) of the peer heard last (a pair has one)."""
        heard = [(p.heard, n, p) for n, p in self.receiver.peers.items() if p.heard > float("-inf")]
        if not heard:
            return None
        _, node, peer = max(heard, key=lambda h: h[0])
        return node, peer

    def peer_view(self) -> dict:
        """The peer as sync knows it, for /status: its node name and what it last said of itself
        (role, priority, address, resigned), and the link's health: `state` none (no peer
        proven alive yet), silent (not live: nothing for PEER_LIVE_HEARTBEATS intervals), repairing (sequence
        numbers missing, or a bulk resync awaited) or ok."""
        now = self.transport.clock()
        lag = {k: (None if v is None else round(v, 1)) for k, v in self.receiver.lag().items()
               if k != "samples"}
        peer = self._peer()
        if peer is None:
            return {"node": None, "said": None, "sync": {"state": "none", "last_heard_s": None,
                                                         "missing": 0, "lag_ms": lag}}
        node, p = peer
        heard = now - p.heard
        if heard > self.live_within:
            health = "silent"
        elif p.missing or p.want_after is not None:
            health = "repairing"
        else:
            health = "ok"
        said = None
        if p.state is not None:
            st = p.state
            said = {"role": st.role, "priority": st.priority or None, "address": st.address or None,
                    "resigned": st.resigned, "age_s": round(now - p.state_at, 3)}
        return {"node": node, "said": said,
                "sync": {"state": health, "last_heard_s": round(heard, 3),
                         "missing": len(p.missing), "lag_ms": lag}}

    def describe(self) -> dict:
        return {"sender": dict(self.sender.stats), "receiver": dict(self.receiver.stats),
                "transport": dict(self.transport.stats), "lag_ms": self.receiver.lag(),
                "missing": self.receiver.missing(), "applied": dict(self.receiver.results)}


async def run_hook(argv: tuple[str, ...], state: str, node: str, timeout: float = 10.0) -> None:
    try:
        proc = await scripts.spawn([*argv, state, node])
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            log.warning("notify %s hook %s timed out after %.0f s (killed)", state, argv[0], timeout)
            return
        if rc:
            log.warning("notify %s hook %s exited %d", state, argv[0], rc)
    except OSError as exc:
        log.warning("notify %s hook %s failed: %s", state, argv[0], exc)


def election_answer(instance, role: str, now: float, preempt_yield: float = 0.0) -> dict:
    """The answer to POST /resign and /resume: the node's state after the change (`role`, the
    role machine's, and `vrrp_state`) and what it will become if nothing else happens
    (`expected`: role, within_ms an upper bound or null when nothing is due, and why).
    `instance` is the ha.vrrp.VrrpInstance; a master-to-be by preemption also waits
    `preempt_yield` before it takes the addresses."""
    o = instance.outlook(now)
    expected = R.role_of(o.state).value
    within = o.within
    if within is not None and expected == R.Role.MASTER.value and role != expected:
        within += preempt_yield
    return {"resigned": bool(instance.resigned), "role": role, "vrrp_state": instance.state.value,
            "expected": {"role": expected,
                         "within_ms": None if within is None else round(within * 1000, 1),
                         "reason": o.reason}}


def takeover_config(cfg) -> TakeoverConfig | None:
    """The addresses a master holds; none in cluster mode, where [interfaces] names the
    tracked links only (BGP routes each /32 to the directors announcing it)."""
    ha = cfg.ha
    if ha is None or not (ha.front_if and ha.back_if) or cfg.mode == "cluster":
        return None
    return TakeoverConfig(ha.front_if, ha.back_if, tuple(cfg.vips), tuple(cfg.laddrs),
                          ha.garp_count, ha.garp_interval)


def role_config(cfg) -> R.RoleConfig:
    ha = cfg.ha
    return R.RoleConfig(election=bool(ha and ha.vrrp), fixed_role=R.Role(cfg.role),
                        addresses=takeover_config(cfg) is not None, sync=bool(ha and ha.sync),
                        startup_sync_wait=ha.startup_sync_wait if ha else 0.0,
                        preempt_yield=ha.preempt_yield if ha else 0.0)


class RoleRunner:
    """Feeds events to the role machine through its bounded inbox and executes its actions."""

    def __init__(self, machine: R.RoleMachine, *, node: str, takeover: Takeover | None,
                 hooks: dict[str, tuple[str, ...]] | None = None, sync: Any = None,
                 set_role: Callable[[str], None] = lambda role: None,
                 start_election: Callable[[], Awaitable[None]] | None = None,
                 set_fault: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 run_hook: Callable[..., Awaitable[None]] = run_hook) -> None:
        self.machine = machine
        self.node = node
        self.takeover = takeover
        self.hooks = hooks or {}
        self.sync = sync
        self.set_role = set_role
        self.start_election = start_election
        self.set_fault = set_fault
        self.clock = clock
        self._run_hook = run_hook
        self.inbox = R.Inbox()
        self.changes: list[dict] = []           # the last 50 role changes (the API's role_changes)
        self.stats = dict.fromkeys(("events", "actions", "errors", "flushed"), 0)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()            # set while nothing waits in the inbox
        self._idle.set()
        self._announce: asyncio.Task | None = None
        self._hook: asyncio.Task | None = None

    # -- input ------------------------------------------------------------------------------

    def post(self, ev: R.Event) -> None:
        """Hand an event to the machine (never blocks; the inbox coalesces)."""
        self.inbox.put(ev)
        self._idle.clear()
        self._wake.set()

    def on_vrrp_change(self, change: StateChange) -> None:
        self.post(R.StateChanged(R.role_of(change.new), change.cause, change.reason))

    def on_lower_priority_claim(self, reason: str) -> None:
        self.post(R.LowerPriorityClaim(reason))

    async def wait(self, timeout: float) -> None:
        """Until an event is posted, or timeout seconds; always yields to the loop once."""
        if not self._wake.is_set() and timeout > 0:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        else:
            await asyncio.sleep(0)      # a caller looping on a past deadline never starves the loop
        self._wake.clear()

    def next_deadline(self) -> float | None:
        return self.machine.next_deadline()

    # -- the pump's step --------------------------------------------------------------------

    async def step(self) -> None:
        """Run the machine's due timer, then every waiting event, most urgent first."""
        await self._execute(self.machine.on_timer(self.clock()))
        while (ev := self.inbox.take()) is not None:
            self.stats["events"] += 1
            await self._execute(self.machine.handle(ev, self.clock()))
        self._idle.set()

    async def settled(self, timeout: float) -> bool:
        """Wait (at most timeout s) until the pump has carried out every event posted so far,
        so the role reads as after them; False on timeout.  (A preempt's yield still to run is
        the machine's timer, not an event: it does not hold this up.)"""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _execute(self, actions: list[R.Action]) -> None:
        for a in actions:
            self.stats["actions"] += 1
            try:
                await self._do(a)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats["errors"] += 1
                log.exception("node %s: %s failed", self.node, type(a).__name__)

    async def _do(self, a: R.Action) -> None:
        if isinstance(a, R.AddAddresses):
            self._stop_announcing()
            if self.takeover is not None:
                await self.takeover.acquire()
        elif isinstance(a, R.RemoveAddresses):
            self._stop_announcing()
            if self.takeover is not None:
                await self.takeover.release()
        elif isinstance(a, R.Announce):
            self._stop_announcing()
            if self.takeover is not None:
                self._announce = asyncio.create_task(self.takeover.announce(), name="garp")
        elif isinstance(a, R.FlushSync):
            if self.sync is not None:
                self.stats["flushed"] += self.sync.flush()
        elif isinstance(a, R.RoleSet):
            self.set_role(a.new.value)
            # `at`: when the addresses actually changed hands (what a drill compares); both on
            # the monotonic clock, shown in epoch seconds by the status layer (director.status)
            self.changes.append({"at": self.clock(), "decided": a.decided,
                                 "from": a.old.value, "to": a.new.value, "reason": a.reason})
            del self.changes[:-50]
        elif isinstance(a, R.RunHook):
            argv = self.hooks.get(a.role.value)
            if argv:
                self._hook = asyncio.create_task(self._chain(self._hook, argv, a.role.value),
                                                 name=f"notify-{a.role.value}")
        elif isinstance(a, R.StartElection):
            if self.start_election is not None:
                await self.start_election()
        elif isinstance(a, R.SetFault):
            if self.set_fault is not None:
                self.set_fault(a.on)
        elif isinstance(a, R.Log):
            log.log(a.level, "node %s: %s", self.node, a.message)
        # R.Wait: the machine's next_deadline says when to step again

    async def _chain(self, before: asyncio.Task | None, argv: tuple[str, ...], state: str) -> None:
        if before is not None:
            await asyncio.gather(before, return_exceptions=True)
        await self._run_hook(argv, state, self.node)

    def _stop_announcing(self) -> None:
        if self._announce is not None and not self._announce.done():
            self._announce.cancel()
        self._announce = None

    @property
    def announcing(self) -> bool:
        return self._announce is not None and not self._announce.done()

    async def close(self, hook_timeout: float = HOOK_DRAIN_TIMEOUT) -> None:
        """Stop any GARP burst; let a running hook finish (bounded)."""
        self._stop_announcing()
        if self._hook is not None and not self._hook.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._hook), hook_timeout)
            except asyncio.TimeoutError:
                log.warning("node %s: notify hook still running after %.1f s; cancelled",
                            self.node, hook_timeout)
                self._hook.cancel()
            except Exception:
                pass
        self._hook = None
