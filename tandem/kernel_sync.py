"""Connection sync for kernel-mode services: the node's glue between the conntrack events,
the sync link and this node's conntrack table.

- Producing (the master): every event about one of tandem's kernel flows
  (KernelPath.flows.watch) goes through syncd.kernel_source, whose entries are queued on
  the sync link (urgent ones without the flush delay); its refreshes are polled every
  REFRESH_TICK; after lost events, the dump that rebuilt the view also tells it what
  changed (KernelFlows.watch_resync).
- Injecting (the backup): received entries of kernel-mode services (templates excepted: the
  engine keeps those) go to director.ct_inject instead of the engine, from bulk resyncs too;
  its requests are sent on the loop, at most ct_inject.BATCH per turn, until none is left.
  The entries carry the master's state changes and refreshes, so an injected entry lives as
  long as the master's flow, and taking over is only addresses and gratuitous ARP.
- A bulk resync this node sends carries its kernel flows besides the engine's connections.
- Only a master produces entries (`set_role`); one that takes over refreshes the flows it
  inherited, and the events its own injections cause are never sent back.
- An injected entry cannot carry the `ct timeout` policy a forwarded flow gets (ctnetlink
  has no attribute for it, and nftables attaches one only to an unconfirmed entry), so
  once it carries packets here the kernel times it out by the namespace's defaults.  At
  start (and after a reload that changes [timeouts]) the node sets those defaults to the
  [timeouts] policy's values (CT_DEFAULTS) and puts the old ones back at stop: a
  taken-over flow keeps IPVS's timeouts.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
from typing import Any, Callable, Iterator

from director.ct_inject import BATCH, Injector
from director.engine import Engine
from director.kernel_rules import MARK_BASE, MARK_PREFIX_MASK, TIMEOUT_POLICY
from proto import ctnetlink as ct
from proto.sync import SyncEntry
from syncd.kernel_source import KernelSyncSource
from syncd.policy import SyncPolicy

log = logging.getLogger("tandem.kernel_sync")

#: s, how often the refreshes of kernel flows are looked at (their intervals are >= 10 s)
REFRESH_TICK = 1.0

#: conntrack's default timeouts of a network namespace (sysctl net.netfilter.<name>) that an
#: entry without a timeout policy follows, by the policy state whose value each takes
#: (director.kernel_rules.TIMEOUT_POLICY; its SYN_SENT2 has no default of its own)
CT_DEFAULTS = {
    "tcp": {state: f"nf_conntrack_tcp_timeout_{state}" for state in (
        "syn_sent", "syn_recv", "established", "fin_wait", "close_wait", "last_ack",
        "time_wait", "close")},
    "udp": {"unreplied": "nf_conntrack_udp_timeout", "replied": "nf_conntrack_udp_timeout_stream"},
}


#: what a cluster director's namespace sets besides (sysctl net.netfilter.<name>): after
#: the router moves a flow, one director sees only its client's packets and the flow's owner
#: only the real server's, so neither tracker sees the other direction's sequence numbers
#: and acknowledgements; without window tracking relaxed (as for any conntrack on
#: asymmetric paths) the owner finds the replies out of window, INVALID, and drops them.
#: Injected entries carry the per-flow BE_LIBERAL already; a director's own flows cannot
#: (nftables has no statement for it), hence the namespace's switch.
CLUSTER_CT = {"nf_conntrack_tcp_be_liberal": 1}


def ct_defaults(timeouts: dict[str, float], cluster: bool = False) -> dict[str, int]:
    """The namespace's default timeouts that match the [timeouts] policy: sysctl name ->
    whole seconds (rounded up, at least 1, as the policy objects are); in cluster mode
    with CLUSTER_CT too."""
    out = {name: max(1, math.ceil(timeouts[TIMEOUT_POLICY[proto][state]]))
           for proto, states in CT_DEFAULTS.items() for state, name in states.items()}
    return {**out, **CLUSTER_CT} if cluster else out


def _is_ours(mark: int) -> bool:
    return mark & MARK_PREFIX_MASK == MARK_BASE


class KernelSync:
    def __init__(self, engine: Engine, kernel_path: Any, sync: Any, kernel: Any,
                 clock: Callable[[], float]) -> None:
        self.engine = engine
        self.sync = sync
        self.clock = clock
        self.kernel = kernel
        self._ct_saved: dict[str, int] | None = None     # the namespace's defaults before ours
        self._ct_applied: dict[str, int] | None = None   # ours, as last set
        self.sock = kernel.open_ct_inject()
        policy = SyncPolicy.from_config(sync.sender.cfg)
        self.source = KernelSyncSource(policy, self._timeout_of, _is_ours,
                                       own_pid=self.sock.portid, table=kernel_path.flows.table,
                                       pair=engine.cfg.cluster is None)
        self.injector = Injector(self._mark_of, self.source.binding)
        self.stats = dict.fromkeys(("injected", "inject_errors"), 0)
        kernel_path.flows.watch(self._on_event)
        kernel_path.flows.watch_resync(self._on_resync)
        rx = sync.receiver
        rx.apply, rx.apply_bulk = self._route(rx.apply, False), self._route(rx.apply_bulk, True)
        tx = sync.sender
        snapshot, to_entry = tx.snapshot, tx.to_entry
        tx.snapshot = lambda: [*(snapshot() if snapshot else ()), *self.source.snapshot()]
        tx.to_entry = lambda obj, now: (self.source.to_entry(obj, now) if isinstance(obj, ct.Tuple)
                                        else to_entry(obj, now) if to_entry else obj)
        self._scheduled = False
        self._pruned = False
        self._tick: asyncio.Task | None = None

    # -- the engine's numbers -----------------------------------------------------------

    def _timeout_of(self, proto: int, state: int) -> float:
        return self.engine.protocols[proto].timeouts[state]

    def _mark_of(self, e: SyncEntry) -> int | None:
        """This node's mark for the entry's binding (made from the config at start), or
        None for one it does not know (the entry is injected unmarked).  In a cluster a
        peer's flow uses the peer's laddr, which no binding of this node has: a kernel-mode
        laddr of `[cluster] members` gets its binding's mark made here, so the flow is in
        this node's view (counted, owned by its member, in this node's bulk for a restarted
        peer)."""
        marks = self.engine.marks
        mark = marks.lookup(e.daddr, e.dport, e.laddr)
        cc = self.engine.cfg.cluster
        if mark is None and cc is not None and str(ipaddress.ip_address(e.laddr)) in cc.kernel_laddrs:
            mark = marks.mark_for(e.daddr, e.dport, e.laddr)
        return mark

    def _kernel_mode(self, e: SyncEntry) -> bool:
        svc = self.engine.services.get((e.proto, e.vaddr, e.vport))
        return svc is not None and svc.forwarding == "kernel" and not e.template

    # -- producing -----------------------------------------------------------------------

    def _queue(self, out: list[tuple[SyncEntry, bool]], now: float) -> None:
        for entry, urgent in out:
            self.sync.transport.queue(entry, now, urgent)

    def _on_event(self, msg: ct.Message, _flow: Any) -> None:
        now = self.clock()
        self._queue(self.source.apply(msg, now), now)

    def _on_resync(self, _flows: Any, entries: list[ct.Conntrack]) -> Iterator[None]:
        """What the dump changed goes out a step at a time (KernelFlows.watch_resync): the
        whole table at once would hold the loop that sends the VRRP adverts."""
        for out in self.source.resync_steps(entries, self.clock()):
            if out:
                now = self.clock()
                self._queue(out, now)
            yield

    def set_role(self, role: str) -> None:
        self.source.set_active(role == "master", self.clock())

    def adopted(self, laddrs: frozenset[str], taken: bool) -> int:
        """Cluster mode: this node adopted these laddrs (their owner is gone), so it refreshes
        their flows over sync from now on, or gave them back to their owner, who does; how
        many flows it takes over."""
        packed = frozenset(ipaddress.ip_address(a).packed for a in laddrs)
        if not taken:
            self.source.release(packed)
            return 0
        n = self.source.take_over(packed, self.clock())
        if n:
            log.info("kernel sync: refreshing %d flows of adopted %s", n, " ".join(sorted(laddrs)))
        return n

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_TICK)
            now = self.clock()
            self._queue(self.source.poll(now), now)

    # -- injecting -----------------------------------------------------------------------

    def _route(self, apply: Callable[[SyncEntry, float], object], bulk: bool):
        def route(entry: SyncEntry, now: float) -> object:
            if not self._kernel_mode(entry):
                return apply(entry, now)
            self.source.confirm(ct.Tuple(entry.proto, entry.caddr, entry.vaddr, entry.cport,
                                         entry.vport))
            self.injector.offer(entry, bulk)
            self._wake()
            return "injected"
        return route

    def bulk_arrived(self) -> None:
        """The peer's bulk answering this node's start-up request came whole (the node
        calls this before it may take over): the flows of this node's kernel table from
        before its start that the peer did not confirm are deleted (KernelSyncSource.prune)."""
        if self._pruned:
            return
        self._pruned = True
        ends = self.source.prune(self.clock())
        if not ends:
            return
        log.info("kernel sync: %d flows from before the start ended on the peer meanwhile: "
                 "deleted", len(ends))
        for e in ends:
            self.injector.offer(e)
        self._wake()

    def _wake(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._inject)

    def _inject(self) -> None:
        self._scheduled = False
        try:
            n = self.sock.run(self.injector, BATCH)
        except OSError as exc:
            self.stats["inject_errors"] += 1
            log.warning("conntrack injection failed: %s (%d waiting)", exc, self.injector.backlog)
            n = 0
        self.stats["injected"] += n
        if n and self.injector.backlog:
            self._wake()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, role: str) -> None:
        self.set_role(role)
        self._set_ct_defaults()
        self._tick = asyncio.get_running_loop().create_task(self._refresh(), name="kernel-sync")

    def _set_ct_defaults(self) -> None:
        """Give entries injected here the [timeouts] policy's values (see the module's
        docstring); only with kernel-mode services, and only when they change."""
        cfg = self.engine.cfg
        if not any(s.forwarding == "kernel" for s in cfg.services):
            return
        want = ct_defaults(dict(cfg.timeouts), cluster=cfg.mode == "cluster")
        if want == self._ct_applied:
            return
        try:
            old = self.kernel.set_ct_timeouts(want)
        except OSError as exc:
            log.warning("conntrack's default timeouts not set (%s): a taken-over kernel flow "
                        "times out by the kernel's defaults, not [timeouts]", exc)
            return
        if self._ct_saved is None:
            self._ct_saved = old
        self._ct_applied = want

    def reconfigured(self) -> None:
        """After a reload (the engine has the new config): a [timeouts] change reaches the
        entries injected here, as the next policy generation reaches new flows."""
        self._set_ct_defaults()

    async def stop(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            await asyncio.gather(self._tick, return_exceptions=True)
            self._tick = None
        if self._ct_saved is not None:
            try:
                self.kernel.set_ct_timeouts(self._ct_saved)
            except OSError as exc:
                log.warning("conntrack's default timeouts not restored: %s", exc)
            self._ct_saved = self._ct_applied = None
        self.sock.close()

    def counters(self) -> dict[str, int]:
        """Flat counters for /status "kernel": entries made from events (urgent ones,
        refreshes, ends) and what the injection did."""
        src, inj = self.source.stats, self.injector.stats
        return {"sync_entries": src["entries"] + src["ends"], "sync_urgent": src["urgent"],
                "sync_refreshes": src["refreshes"], "sync_ends": src["ends"],
                "sync_pruned": src["pruned"],
                "inject_created": inj["created"], "inject_updated": inj["updated"],
                "inject_deleted": inj["deleted"], "inject_stale": inj["stale"],
                "inject_failed": inj["failed"],
                "inject_backlog": self.injector.backlog}

    def describe(self) -> dict:
        return {"source": dict(self.source.stats), "flows": len(self.source.flows),
                "injector": dict(self.injector.stats), "inject_errors": dict(self.injector.errors),
                "injected_known": len(self.injector.known), **self.stats}


def attach(engine: Engine, kernel_path: Any, sync: Any, kernel: Any,
           clock: Callable[[], float]) -> KernelSync | None:
    """The node's KernelSync, when it syncs (a real sync link) over a kernel that can inject."""
    if sync is None or not hasattr(sync, "receiver") or not hasattr(kernel, "open_ct_inject"):
        return None
    return KernelSync(engine, kernel_path, sync, kernel, clock)


def kernel_status(kernel_path: Any, kernel_sync: KernelSync | None) -> dict | None:
    """/status "kernel": the kernel path's counters, with kernel sync's when it runs."""
    base = kernel_path.describe()
    if base is None or kernel_sync is None:
        return base
    return {**base, **kernel_sync.counters()}
