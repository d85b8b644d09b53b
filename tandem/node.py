"""`tandem node`: one director node — engine, NFQUEUE, rules, timers, sync, election, API.

    node = Node(cfg, path="/etc/tandem/a.toml")
    await node.start()        # listening, rules in place, sync running; the pump takes over
    ...
    await node.stop()         # planned: the election says goodbye, sync flushed, addresses go

One event pump (`Node._pump`) runs everything that happens over time: the engine's expiry tick,
the collector freeze, tracked-link checks, the wait for the peer's bulk resync, and the role
machine's events and timers (through `RoleRunner`).  Nothing blocking runs on the loop, which
also sends VRRP adverts: netlink and iptables go to worker threads.

Everything that touches the kernel goes through one privileged interface, `Edges.kernel`
(tandem/kernel.py; tests hand in tests/fake_kernel.py); the other edges (the queue adapter, the
VRRP runner, takeover, sync, health checks) are built around it and a test replaces them too.

Size: the node's whole life (build, start order, event pump, reload, stop order) in one
place, as docs/architecture.md describes it; changed this session by the kernel fast path,
a split (edges and builders apart from Node) is left until that work has landed.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

from director.api import make_app
from director.config import (ConfigError, NodeConfig, check_reloadable, load,
                             unicast_peers_reloadable)
from director.control import Control
from director.engine import Engine
from director.health import HealthChecker, targets_for_service
from director.nfqueue import QueueAdapter, kernel_queue_stats
from director.overrides import BadOverride, Override, Overrides
from director.status import NodeParts
from ha import role as R
from ha.takeover import Takeover
from ha.vrrp import Cause, State
from ha.vrrp_io import VrrpRunner
from schema.core import FieldError, os_reason
from tandem.cluster import MEMBER, attach as attach_cluster
from tandem.ha import RoleRunner, SyncLink, election_answer, role_config, takeover_config
from tandem.kernel import Kernel, LinuxKernel
from tandem.kernel_mode import KernelPath, engine_addresses, kernel_services
from tandem.kernel_sync import attach as attach_kernel_sync, kernel_status
from tandem.sd_notify import Notifier
from tandem.state_file import StateFile, load as load_overrides, path_in

log = logging.getLogger("tandem.node")
#: seconds between checks of the tracked interfaces (front and back)
LINK_CHECK_INTERVAL = 0.2
#: seconds between looks for the peer's bulk resync while a starting node waits for it
SYNC_POLL_INTERVAL = 0.01
#: seconds POST /resign and /resume wait for the role machine to carry out the change
ELECTION_SETTLE_TIMEOUT = 2.0
#: freeze the collector's view of long-lived objects every this many new entries
GC_FREEZE_EVERY = 50_000
#: and every this many conntrack events and dump entries decoded (kernel mode)
GC_FREEZE_EVERY_KERNEL = 10_000


class GcFreezer:
    """Keeps the cyclic garbage collector off the connection table.

    A million connections are ~3 million tracked objects; a full collection of
    them takes ~0.9 s, during which no packet is read and no VRRP advert is
    sent, so the backup takes over from a healthy master.  Connections form no
    reference cycles (refcounting frees them), so once the young generations
    are collected the survivors are moved to the permanent generation
    (gc.freeze), where collections no longer scan them.  The price: cyclic
    garbage that reached the oldest generation by then is never collected;
    the young collection just before each freeze keeps that small.

    Kernel mode makes its long-lived objects from conntrack events, and a repair
    dump holds tens of thousands of decoded entries for a second or two: enough
    for full collections of 100-250 ms during a burst (measured in the lab), longer
    than a 100 ms advert interval allows.  So `kernel_made` (the events and dump
    entries decoded) counts too, by a finer step: a full collection then sees at
    most ~GC_FREEZE_EVERY_KERNEL entries' objects.
    """

    def __init__(self, engine: Engine, kernel_made: Callable[[], int] = lambda: 0) -> None:
        self.engine = engine
        self.kernel_made = kernel_made
        self.at = 0
        self.kernel_at = 0

    def maybe_freeze(self, force: bool = False) -> None:
        made = self.engine.stats["conns_new"] + self.engine.sync_stats["created"]
        kmade = self.kernel_made()
        if (force or made - self.at >= GC_FREEZE_EVERY
                or kmade - self.kernel_at >= GC_FREEZE_EVERY_KERNEL):
            self.at, self.kernel_at = made, kmade
            gc.collect(1)
            gc.freeze()


def health_targets(engine: Engine) -> list:
    return [t for svc in engine.services.values() if svc.cfg.health
            for t in targets_for_service(svc.cfg, svc.cfg.health)]


@dataclass
class Edges:
    """The node's edges (the real ones by default).  Every privileged operation is a call on
    `kernel`; the factories below are handed it (or the part of it they use)."""
    kernel: Kernel = field(default_factory=LinuxKernel)
    queue: Callable[..., Any] = QueueAdapter                 # (handler, queue_num, clock, bind=)
    queue_stats: Callable[[int], dict] = kernel_queue_stats
    takeover: Callable[..., Any] = Takeover                  # (TakeoverConfig, kernel)
    vrrp: Callable[..., Any] = VrrpRunner                    # (VrrpConfig, ifname, ..., socket_factory=)
    sync: Callable[..., Any] = SyncLink                      # (NodeConfig, Engine)
    health: Callable[..., Any] = HealthChecker               # (targets, on_change)
    #: cluster mode: what tells BIRD the announced prefixes (.apply(prefixes)); None: the
    #: include and socket of [cluster] (ha.bird_io.BirdAnnouncer)
    bird: Any = None


class Node:
    def __init__(self, cfg: NodeConfig, *, path: str | None = None,
                 clock: Callable[[], float] = time.monotonic, edges: Edges | None = None) -> None:
        self.cfg = cfg
        self.path = path
        self.clock = clock
        self.edges = edges = edges or Edges()
        ha = cfg.ha
        self.engine = Engine(cfg, now=clock())
        self.adapter = edges.queue(self.engine.handle, cfg.queue, clock, bind=edges.kernel.bind_queue)
        self.sync = edges.sync(cfg, self.engine) if ha and ha.sync else None
        # the operator's overrides: from the state file, to and from the peer
        self.state_file = StateFile(path_in(cfg.state_dir))
        self.overrides = Overrides(cfg.name, load_overrides(self.state_file.path))
        self.control = Control(self.engine, self.overrides, on_change=self._overrides_changed,
                               kept=self.state_file.drain)
        self.control.apply_all()
        if self.sync is not None and hasattr(self.sync, "carry_overrides"):
            self.sync.carry_overrides(lambda: [o.to_list() for o in self.overrides.entries()],
                                      self._overrides_from_peer)
        self.checker = edges.health(health_targets(self.engine), self.control.health_changed)
        tcfg = takeover_config(cfg)
        self.role = RoleRunner(R.RoleMachine(role_config(cfg)), node=cfg.name,
                               takeover=edges.takeover(tcfg, edges.kernel) if tcfg else None,
                               hooks=dict(ha.notify) if ha else {}, sync=self.sync,
                               set_role=self._set_role, start_election=self._start_election,
                               set_fault=self._set_fault, clock=clock)
        self.vrrp: VrrpRunner | None = None
        #: kernel-mode services: their rules, the conntrack event feed, the accounting
        self.kernel_path = KernelPath(self.engine, edges.kernel, cfg.queue, clock=clock)
        # the queued first packets before each slice of conntrack events (director.turn_slices)
        self.kernel_path.slices.urgent = getattr(self.adapter, "serve_pending", lambda: None)
        self.freezer = GcFreezer(self.engine, self.kernel_path.objects_made)
        #: sync of kernel-mode flows: sent from events, injected into conntrack on the peer
        self.kernel_sync = attach_kernel_sync(self.engine, self.kernel_path, self.sync,
                                              edges.kernel, clock)
        #: what the API and the metrics read (director/status.py)
        #: the role machine's role (a cluster member's /status says "member" instead)
        self.machine_role = "init" if ha and ha.vrrp else cfg.role
        in_cluster = cfg.mode == "cluster" and cfg.cluster is not None
        self.state = NodeParts(cfg.name, MEMBER if in_cluster else self.machine_role,
                               started=clock(),
                               clock=clock, queue_stats=self._queue_stats,
                               control=self.control, sync=self.sync, health=self.checker,
                               role_changes=self.role.changes, api_token=cfg.api_token,
                               reload=self.reload, resign=self.resign, resume=self.resume,
                               kernel=lambda: kernel_status(self.kernel_path, self.kernel_sync),
                               cluster=lambda: self.cluster.status() if self.cluster else None,
                               cluster_drain=self._cluster_drain,
                               kernel_path=lambda: self.kernel_path if self.kernel_path.loaded else None)
        if self.sync is not None:
            self.sync.on_peer_state(self._on_peer_state)
        #: the interfaces whose loss puts the node in fault: the pair's election, or in
        #: cluster mode its announcements (tandem/cluster.py links_changed)
        self._tracked = list(dict.fromkeys(
            i for i in ((ha.front_if, ha.back_if) if ha and (ha.vrrp or in_cluster) else ()) if i))
        self._http: web.AppRunner | None = None
        self._pump_task: asyncio.Task | None = None
        self._links: asyncio.Task | None = None
        self._closing = False
        self._phase = "new"
        #: node.mode = "cluster": the announcer wired to this node (tandem/cluster.py)
        self.cluster = attach_cluster(self)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen first, then steer traffic to the queue: never a window where rules exist and
        nobody reads (the kernel would drop meanwhile).  Returns once the node is up; the
        election starts from the pump (after the peer's bulk resync or startup_sync_wait)."""
        if self._phase != "new":
            raise RuntimeError(f"node {self.cfg.name} is {self._phase}")
        self._phase = "starting"
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        if self.cluster is not None:    # a dead node's stale routes go before anything else
            await self.cluster.clear()
        self._http = web.AppRunner(make_app(self.engine, self.state, self.clock), access_log=None)
        await self._http.setup()
        self.role.post(R.Starting())
        await self.role.step()
        self.adapter.start(loop)
        await asyncio.to_thread(self.edges.kernel.install_rules, self._queued(cfg), cfg.queue,
                                bool(kernel_services(cfg)))
        await self.kernel_path.start(cfg)
        try:
            await web.TCPSite(self._http, cfg.api_host, cfg.api_port).start()
        except OSError as exc:          # the config's address, on this host: say which key
            raise FieldError("node.api", f"cannot listen on {cfg.api_host}:{cfg.api_port} "
                                         f"({os_reason(exc)})") from None
        await self.checker.start()
        if self.sync is not None:
            await self.sync.start()
        if self.kernel_sync is not None:
            self.kernel_sync.start(self.machine_role)
        log.info("node %s: up, queue %d, %d services, api http://%s:%d%s", cfg.name, cfg.queue,
                 len(cfg.services), cfg.api_host, cfg.api_port, ", syncing" if self.sync else "")
        self.role.post(R.Started())
        if not (cfg.ha and cfg.ha.vrrp):
            # No election to wait for (whose start freezes, after the peer's bulk): the
            # start-up's long-lived objects (modules, the API app, the config) leave the
            # collector's view now, or every full collection under new connections scans
            # them again (GcFreezer; the node before the Node object froze here too)
            self.freezer.maybe_freeze(force=True)
        self._pump_task = asyncio.create_task(self._pump(), name=f"node-{cfg.name}")
        self._phase = "running"
        if self.cluster is not None:
            if self._tracked:           # never announce, even once, with a tracked link down
                await self._check_links()
            await self.cluster.start()

    async def _cluster_drain(self, on: bool) -> dict | None:
        return await self.cluster.drain(on) if self.cluster is not None else None

    @property
    def api_address(self) -> tuple[str, int] | None:
        """(host, port) the API listens on, once started: the port the OS chose when the
        config's is 0 (tests)."""
        addrs = self._http.addresses if self._http is not None else []
        return tuple(addrs[0][:2]) if addrs else None

    def _queued(self, cfg: NodeConfig) -> list[str]:
        """The addresses the queue rule steers: the engine's, and in cluster mode every
        member's laddrs (an adopted laddr needs no new rule)."""
        extra = self.cluster.rule_addresses() if self.cluster is not None else []
        return sorted(set(engine_addresses(cfg)) | set(extra))

    async def stop(self) -> None:
        """A planned stop: a master lets its addresses go (sync flushed first), then the
        election leaves (priority 0: the peer takes over after its skew), then the rest is
        taken down; see `_release_before_priority_zero` for why in that order."""
        if self._phase in ("new", "stopped", "stopping"):
            self._phase = "stopped"
            return
        self._phase = "stopping"
        try:
            if self.cluster is not None:    # peers told, routes withdrawn: before the engine goes
                await self.cluster.stop()
            await self.checker.stop()
            await self._release_before_priority_zero(
                Cause.SHUTDOWN, "stopping (addresses released, then priority 0)")
            if self.vrrp is not None:
                await self.vrrp.stop(graceful=True)   # priority 0: the peer takes over after its skew
            self.role.post(R.Stopping())
            self._closing = True
            if self._pump_task is not None:
                await asyncio.gather(self._pump_task, return_exceptions=True)
            if self._links is not None:
                await asyncio.gather(self._links, return_exceptions=True)
            if len(self.role.inbox):
                await self.role.step()
            await self.role.close()
        finally:
            fate = self._connections_fate()
            if self.sync is not None:
                self.sync.close()
            if self.kernel_sync is not None:
                await self.kernel_sync.stop()
            await self.state_file.drain()
            await asyncio.to_thread(self.edges.kernel.remove_rules)
            await self.kernel_path.stop()
            self.adapter.stop()
            if self._http is not None:
                await self._http.cleanup()
            self._phase = "stopped"
            log.info("node %s: stopped%s", self.cfg.name, fate)

    def _connections_fate(self) -> str:
        """What becomes of the table on a stop: a live peer has it (sync runs all the time,
        and leaving master flushed it) and carries it on, else it goes with this node."""
        n, sync = self.engine.table.count, self.sync
        if not n:
            return " (no connections)"
        if sync is None:
            return f" ({n} connections dropped with it)"
        heard = sync.last_heard()
        if heard is not None and heard[1] <= sync.live_within:
            return (f"; its {n} connections were synced to peer {heard[0]} "
                    f"(last heard {heard[1]:.1f} s ago)")
        why = f"peer {heard[0]} last heard {heard[1]:.1f} s ago" if heard else "no peer heard"
        return f" ({n} connections dropped with it: {why})"

    async def run_until_signalled(self) -> None:
        """start(); run until SIGTERM or SIGINT (SIGHUP reloads the file); stop()."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        notifier = Notifier()
        try:
            await self.start()
            notifier.start()            # READY=1; the watchdog's pings from this loop
            await done.wait()
        finally:
            notifier.stop()
            await self.stop()

    def _queue_stats(self) -> dict[str, int]:
        """/status "queue" and the metrics: the kernel's counters for the node's queue, and
        the queue reader's own: how often the queue woke the loop (wakeups), and verdicts
        that failed inside another reader's turn (serve_errors, QueueAdapter.serve_pending)."""
        own = {k: getattr(self.adapter, k) for k in ("wakeups", "serve_errors")
               if hasattr(self.adapter, k)}
        return {**self.edges.queue_stats(self.cfg.queue), **own}

    # -- the pump ----------------------------------------------------------------------------------

    async def _pump(self) -> None:
        tick = self.cfg.tick
        now = self.clock()
        next_tick = now + tick
        next_link = now
        while True:
            try:
                next_tick, next_link = await self._turn(next_tick, next_link)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node %s: event pump", self.cfg.name)
                next_tick = self.clock() + tick
            if self._closing and not len(self.role.inbox):
                return
            wake = [next_tick]
            if self._tracked:
                wake.append(next_link)
            deadline = self.role.next_deadline()
            if deadline is not None:
                wake.append(deadline)
            if self.role.machine.waiting_for_sync:
                wake.append(self.clock() + SYNC_POLL_INTERVAL)
            await self.role.wait(min(wake) - self.clock())

    async def _turn(self, next_tick: float, next_link: float) -> tuple[float, float]:
        """One turn of the pump: what is due now."""
        now = self.clock()
        if now >= next_tick:
            next_tick = now + self.cfg.tick
            self.engine.expire(now)
            self.freezer.maybe_freeze()
            if self.kernel_path.loaded:
                self.kernel_path.poll()         # a reader lost to an overrun; late counts
        if self._tracked and now >= next_link and not self._closing:
            next_link = now + LINK_CHECK_INTERVAL
            if self._links_idle:    # (a check still running: skip this one)
                # in the background: a netlink round trip in a thread can take tens of ms on
                # a loaded machine, and a state change must never wait behind it
                self._links = asyncio.create_task(self._check_links(), name="link-check")
        if self.kernel_sync is not None and self.sync is not None and self.sync.bulk_done:
            self.kernel_sync.bulk_arrived()         # before it may take over: see there
        if self.role.machine.waiting_for_sync and self.sync is not None and self.sync.bulk_done:
            self.role.post(R.SyncComplete())
        await self.role.step()
        return next_tick, next_link

    @property
    def _links_idle(self) -> bool:
        return self._links is None or self._links.done()

    async def _check_links(self) -> None:
        try:
            down = await asyncio.to_thread(self.edges.kernel.links_down, self._tracked)
        except OSError as exc:
            log.warning("link check failed: %s", exc)
            return
        if self.cluster is not None:    # no election: the links feed what it announces
            self.cluster.links_changed(down)
            return
        self.role.post(R.LinkChanged(not down, tuple(down) or tuple(self._tracked)))

    # -- what the role runner calls --------------------------------------------------------------

    def _set_role(self, role: str) -> None:
        self.machine_role = role
        if self.cluster is None:        # a cluster member's /status role stays "member"
            self.state.set_role(role)
        if self.kernel_sync is not None:
            self.kernel_sync.set_role(role)
        self._announce()

    def _announce(self, resigned: bool | None = None) -> None:
        """Tell the peer over sync what this node is (role, priority, VRRP address, resigned):
        how it tells our resignation from a stop, and what its /status shows of us."""
        if self.sync is None:
            return
        if self.cluster is not None:    # a member says active, draining or leaving
            self.cluster.tell_peers()
            return
        vcfg = self.cfg.ha.vrrp if self.cfg.ha else None
        if resigned is None:
            resigned = self.vrrp is not None and self.vrrp.instance.resigned
        self.sync.announce(self.state.status().role, vcfg.priority if vcfg else 0,
                           vcfg.primary_address if vcfg else "", resigned)

    def _on_peer_state(self, node: str, said) -> None:
        if self.vrrp is not None and said.address:
            self.vrrp.instance.note_peer(said.address, said.resigned)

    def _set_fault(self, on: bool) -> None:
        if self.vrrp is not None:
            self.vrrp.set_fault(on)

    async def _start_election(self) -> None:
        ha = self.cfg.ha
        assert ha is not None and ha.vrrp is not None      # the role machine elects only then
        log.info("node %s: %d connections held; election starts", self.cfg.name,
                 self.engine.table.count)
        self.freezer.maybe_freeze(force=True)       # after the initial resync's bulk
        self.vrrp = self.edges.vrrp(ha.vrrp, ha.front_if, on_change=self.role.on_vrrp_change,
                                    on_reannounce=self.role.on_lower_priority_claim,
                                    socket_factory=self.edges.kernel.open_vrrp_socket)
        self.state.attach_election(self.vrrp, ha.vrrp.priority)
        said = self.sync.peer_state() if self.sync is not None else None
        if said is not None:
            self._on_peer_state("", said)
        await self.vrrp.start()
        if self.role.machine.fault:
            self.vrrp.set_fault(True)

    # -- the operator's resign and resume ------------------------------------------------------

    async def resign(self) -> dict | None:
        """Hand mastership to the peer; answers once it is carried out, with the state after
        it.  None when no election runs.

        A master lets its addresses go before its priority 0 (`_release_before_priority_zero`);
        before both, it tells the peer over sync that it resigns, so the peer's takeover says
        so."""
        if self.vrrp is None:
            return None
        inst = self.vrrp.instance
        if inst.state is State.MASTER and not inst.is_owner:
            self._announce(resigned=True)
        await self._release_before_priority_zero(
            Cause.RESIGNED, "resigned by operator (addresses released, then priority 0)")
        self.vrrp.resign()
        self._announce()
        return await self._election_answer()

    async def _release_before_priority_zero(self, cause: Cause, reason: str) -> None:
        """A master leaving on purpose (resign, stop) lets its addresses go (the role
        machine's release: sync flushed, VIPs and laddrs removed) before its VRRP instance
        advertises priority 0, after which the peer takes over within its skew time: the
        two never hold the addresses at once, at the price of a gap of the release plus the
        peer's skew (a netlink removal on a loaded host can take longer than the skew, so
        the other order let the two overlap: two masters for 7-21 ms in drills).  Nothing
        for a backup, a node without election, or the address owner (which keeps them)."""
        if self.vrrp is None:
            return
        inst = self.vrrp.instance
        if inst.state is State.MASTER and not inst.is_owner:
            self.role.post(R.StateChanged(R.Role.BACKUP, cause, reason))
            await self.role.settled(ELECTION_SETTLE_TIMEOUT)

    async def resume(self) -> dict | None:
        """End a resignation: the node preempts again (it may become master after the
        election's timers: the answer's `expected` says so)."""
        if self.vrrp is None:
            return None
        self.vrrp.resume()
        self._announce()
        return await self._election_answer()

    async def _election_answer(self) -> dict:
        await self.role.settled(ELECTION_SETTLE_TIMEOUT)
        ha = self.cfg.ha
        assert self.vrrp is not None
        return election_answer(self.vrrp.instance, self.state.status().role, self.clock(),
                               ha.preempt_yield if ha else 0.0)

    # -- the operator's overrides ------------------------------------------------------------

    def _overrides_changed(self, changed: list[Override]) -> None:
        """A change made through this node's API: keep it, and tell the peer."""
        self.state_file.save_soon(self.overrides.dumps())
        if self.sync is not None and hasattr(self.sync, "send_overrides"):
            self.sync.send_overrides([o.to_list() for o in changed])

    def _overrides_from_peer(self, peer: str, items: list[list]) -> None:
        entries = []
        for item in items:
            try:
                entries.append(Override.from_list(item))
            except BadOverride as exc:
                log.warning("peer %s: an override that makes no sense, ignored: %s", peer, exc)
        if self.control.from_peer(peer, entries):
            self.state_file.save_soon(self.overrides.dumps())

    # -- reload ---------------------------------------------------------------------------------

    async def reload(self) -> dict:
        """Re-read the file; apply it only if all of it is valid."""
        if self.path is None:
            raise ConfigError("<none>", "(file)", "the node was not started from a file")
        new = await asyncio.to_thread(load, self.path)
        old = self.cfg
        check_reloadable(old, new)
        queued = self._queued(old)
        await self.kernel_path.reload(old, new)        # the new marks exist before the engine
        summary = self.engine.reconfigure(new, self.clock())
        if self.kernel_sync is not None:
            self.kernel_sync.reconfigured()             # injected entries' timeouts follow
        deleted = await self.kernel_path.expire_removed(old, new)
        if self.kernel_path.loaded:
            summary["kernel_flows_deleted"] = deleted
        self.control.apply_all()
        await self.checker.set_targets(health_targets(self.engine))
        summary.update(self._reload_membership(old, new))
        if self._queued(new) != queued:         # services' addresses, or members' laddrs
            await asyncio.to_thread(self.edges.kernel.install_rules, self._queued(new), new.queue)
        self.state.api_token = new.api_token
        if new.state_dir != old.state_dir:
            log.warning("node %s: reload: [node] state_dir changed: the state file stays %s "
                        "until the next start", new.name, self.state_file.path)
        for line in self.control.file_conflicts():
            log.info("node %s: reload: %s", new.name, line)
        self.cfg = new
        log.info("node %s: reloaded %s (%s)", new.name, self.path,
                 ", ".join(f"{k} {v}" for k, v in summary.items()))
        return {"changed": True, **summary}

    def _reload_membership(self, old: NodeConfig, new: NodeConfig) -> dict:
        """Cluster mode: the members and sync peers a reload changed (the only [cluster] and
        [sync] keys it applies: check_reloadable refuses the rest)."""
        out: dict = {}
        if self.cluster is None:
            return out
        o, n = old.ha.sync if old.ha else None, new.ha.sync if new.ha else None
        if (self.sync is not None and o is not None and n is not None
                and unicast_peers_reloadable(o, n) and n.peers != o.peers):
            self.sync.set_peers(n.peers)
            out["sync_peers"] = len(n.peers)
        if new.cluster.members != old.cluster.members:
            added = self.cluster.set_members(new.cluster, self.clock())
            out["members"] = len(self.cluster.members)
            if added:
                out["members_added"] = added
        return out

    def _on_sighup(self) -> None:
        async def go() -> None:
            try:
                await self.reload()
            except ConfigError as exc:
                log.error("node %s: reload refused, nothing changed: %s", self.cfg.name, exc)
            except Exception:
                log.exception("node %s: reload failed", self.cfg.name)
        asyncio.get_running_loop().create_task(go())


async def run(cfg: NodeConfig, clock: Callable[[], float] = time.monotonic,
              path: str | None = None) -> None:
    """Run one node until SIGTERM or SIGINT."""
    await Node(cfg, path=path, clock=clock).run_until_signalled()
