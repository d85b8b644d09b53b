"""The node's part of `forwarding = "kernel"`: rules, the conntrack event feed, accounting.

The engine schedules a kernel-mode service's first packet and answers with a mark
(director.engine.Mark); the kernel's conntrack NAT does the rest (director.kernel_rules).
This module keeps three promises around that:

- every mark the engine can hand out is in the kernel's `dnat`/`snat` maps before the
  engine can hand it out: the bindings (real server, port, laddr; the sorry server too)
  are made from the config and loaded before the config reaches the engine (start and
  reload);
- the flows are followed from conntrack events (director.ct_events) into a `KernelFlows`
  view (director.kernel_flows), read on the event loop at most 64 datagrams or 2 ms per
  wake-up, in slices with the queued first packets served before each (director.turn_slices);
  the socket is bound before the rules load
  (the kernel sends no event for a flow created while nobody listened).  A lost event
  (ENOBUFS) is counted and repaired by a dump (tandem.kernel_resync: read and reconciled
  on the loop a slice per turn, overruns soon after a repair coalesced into the next one);
  events read during the repair are applied after it;
- the connection-counting schedulers see kernel flows: after each batch the active and
  inactive counts of the real servers whose flows changed are set from the view.  A flow
  handed to the kernel counts as inactive on its real server at once, as IPVS counts a
  connection when it binds it, until its NEW event arrives (or PENDING_FOR seconds pass:
  a first packet dropped later never makes an entry); otherwise a burst of new flows,
  scheduled before their events come back, would all go to the same real server.

Other parts plug in through `flows` (KernelFlows.watch / watch_resync: connection sync).

Two more things an operator relies on:
- a restarted node's predecessor left its flows in conntrack (the kernel forwards them on):
  at start, once the event socket listens, one dump is taken, the marks those flows carry
  are given back to their bindings (Marks.adopt: the reply tuple names the real server and
  laddr), and the flows become the view, so the schedulers' counts and /status are right
  from the start;
- the table's drop counters (invalid, untranslated: kernel_rules.DROP_COUNTERS) are read
  when someone reads them (tandem.kernel_drops).

Size: one adapter keeping three promises that share the view, the pending counts and the
event reader; repairs, drop counters, timeout objects and expiry checks are modules apart.
"""
from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import time
from typing import Any, Callable, Iterable

from director import kernel_rules as KR
from director.config import NodeConfig, ServiceConfig
from director.engine import Engine
from director.kernel_flows import KernelFlows, adoptable
from director.turn_slices import Slices
from proto import ctnetlink as ct
from proto.consts import PROTOS
from tandem.kernel_drops import DropCounters
from tandem.kernel_expiry import ExpiryChecks
from tandem.kernel_resync import Repairs
from tandem.kernel_timeout_gc import TimeoutGc, generation_names

log = logging.getLogger("tandem.kernel_mode")
#: seconds a flow handed to the kernel counts on its real server without its NEW event
PENDING_FOR = 2.0


def _key(s: ServiceConfig) -> tuple[int, bytes, int]:
    """A service as a flow's original tuple names it: (protocol, VIP, port)."""
    return (PROTOS[s.proto], ipaddress.ip_address(s.vip).packed, s.port)


def kernel_services(cfg: NodeConfig) -> list[ServiceConfig]:
    return [s for s in cfg.services if s.forwarding == "kernel"]


def engine_addresses(cfg: NodeConfig) -> list[str]:
    """The VIPs and laddrs of engine-mode services: what director.rules steers into the
    queue untracked (a kernel-mode service's addresses must stay tracked)."""
    svcs = [s for s in cfg.services if s.forwarding != "kernel"]
    return sorted({s.vip for s in svcs} | {a for s in svcs for a in s.laddrs})


def rule_services(cfg: NodeConfig) -> list[KR.KernelService]:
    return [KR.KernelService(s.vip, s.proto, s.port, tuple(s.laddrs)) for s in kernel_services(cfg)]


def make_bindings(cfg: NodeConfig, marks: KR.Marks) -> list[KR.Binding]:
    """Give every binding a kernel-mode service of `cfg` can choose its mark, and return
    all bindings ever made (a mark once given stays in the maps)."""
    for s in kernel_services(cfg):
        targets = [(r.addr, r.port) for r in s.real_servers]
        if s.sorry_server is not None:
            targets.append(s.sorry_server)
        for addr, port in targets:
            for laddr in s.laddrs:
                marks.mark_for(addr, port, laddr)
    return marks.bindings()


class KernelPath:
    """Built by the node; `kernel` is its privileged interface (tandem.kernel.Kernel)."""

    def __init__(self, engine: Engine, kernel: Any, queue: int,
                 on_error: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.clock = clock
        #: (proto, vip, vport, mark) -> times of flows handed over, NEW event not yet seen
        self.pending: dict[tuple[int, bytes, int, int], collections.deque] = {}
        engine.kernel_hook = self._handed_over
        self.kernel = kernel
        self.queue = queue
        self.flows = KernelFlows()
        self.flows.watch(self._seen)
        self.events: Any = None
        #: the event reader's turns; the node sets `urgent` (queued first packets first)
        self.slices = Slices(lambda: None, clock)
        self.loaded = False
        self.stats = dict.fromkeys(("event_batches", "dump_repairs", "dump_failures",
                                    "deleted", "read_errors", "adopt_conflicts",
                                    "dumps_coalesced", "repair_steps", "dump_entries"), 0)
        #: the table's drop counters (invalid, untranslated), read when they are read
        self.drop_counters = DropCounters(kernel, clock)
        #: the [timeouts] the loaded table's newest policies hold, and their generation
        self.timeouts: dict[str, float] | None = None
        self.timeout_generation = 1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: list[ct.Message] | None = None     # events read while the start's dump runs
        #: events lost: a dump wanted once the socket is read empty
        self._want_dump = False
        self._on_error = on_error or (lambda msg: log.warning("%s", msg))
        #: the repairs after lost events (tandem.kernel_resync)
        self.repairs = Repairs(self.flows, kernel, clock, self.stats, lambda m: self._on_error(m), self.account)
        #: old timeout objects, deleted once no flow may use them
        self.timeout_gc = TimeoutGc(kernel, self.flows, clock, lambda m: self._on_error(m))
        self.expiry = ExpiryChecks(kernel, self.flows, clock, self._on_error, self.account)

    def objects_made(self) -> int:
        """Decoded events and dump entries so far: what the node's GcFreezer counts, since
        those held for a repair and the flows kept live long enough to reach the
        collector's oldest generation."""
        return self.flows.stats["events"] + self.stats["dump_entries"]

    def describe(self) -> dict[str, Any] | None:
        """What /status says under "kernel" and the metrics export; None without kernel mode."""
        if not self.loaded:
            return None
        flows = self.flows
        active = sum(c[0] for c in flows.counts.values())
        inactive = sum(c[1] for c in flows.counts.values())
        return {"flows": len(flows.flows), "active": active, "inactive": inactive,
                **{k: flows.stats[k] for k in ("events", "new", "destroyed", "overruns",
                                                "resyncs", "repaired", "adopted", "expired",
                                                "late_destroys")},
                **self.stats, "counter_read_failures": self.drop_counters.failures,
                "timeout_objects_held": self.timeout_gc.retired.held(),
                "timeout_objects_removed": self.timeout_gc.removed,
                "expiry_checks": self.expiry.checks, "expiry_check_failures": self.expiry.failures,
                "drops": self.drop_counters.read()}

    # -- rules -------------------------------------------------------------------------------

    async def start(self, cfg: NodeConfig) -> None:
        """Listen, adopt the flows a predecessor left, then load the rules (nothing when
        no service is kernel-mode)."""
        self._loop = asyncio.get_running_loop()
        if kernel_services(cfg):
            self._listen()
            await self._adopt()
            await self._load(cfg, fresh=True)

    def _listen(self) -> None:
        if self.events is None:
            self.events = self.kernel.open_ct_events()
            assert self._loop is not None
            self._loop.add_reader(self.events.fileno(), self.on_readable)

    async def _adopt(self) -> None:
        """Take the flows already in conntrack with tandem's marks as the view, each mark
        given back to the binding its entry's NAT shows (reply tuple: the real server, the
        laddr), before this run's marks are made.  Events read meanwhile are held and
        applied after it."""
        self._held = []
        try:
            entries: list | None = await asyncio.to_thread(self.kernel.dump_conntrack)
        except (OSError, TimeoutError) as exc:
            self.stats["dump_failures"] += 1
            self._on_error(f"conntrack dump at start failed: {exc}; flows a previous run left "
                           "are not counted until the repair that follows")
            entries = None
        kept, conflicts = adoptable(entries or [], self.engine.marks)
        self.stats["adopt_conflicts"] += conflicts
        n = self.flows.adopt(kept, self.clock())
        if entries is None:
            # the view may miss a predecessor's flows: repaired by a dump as after lost
            # events (once the socket is read empty), and until then nothing is released
            # on its word (the old timeout objects those flows use: TimeoutGc.poll)
            self.flows.needs_resync = True
            self._want_dump = True
        held, self._held = self._held, None
        for m in held:
            self.flows.apply(m, self.clock())
        if n or self.stats["adopt_conflicts"]:
            log.info("start: %d kernel flows of a previous run adopted (%d with a mark that "
                     "names another binding, left out)", n, self.stats["adopt_conflicts"])
        self.account()

    async def _load(self, cfg: NodeConfig, fresh: bool) -> None:
        self._listen()
        bindings = make_bindings(cfg, self.engine.marks)
        want = dict(cfg.timeouts)
        if fresh:
            # a predecessor's timeout objects stay (the flows adopted use them): this run's
            # generation comes after theirs
            left = await asyncio.to_thread(self.kernel.kernel_timeout_objects)
            timeouts = want
            generation = max((KR.timeout_generation(n) or 0 for n in left), default=0) + 1
        elif want != self.timeouts:
            timeouts, generation = want, self.timeout_generation + 1
        else:
            timeouts, generation = None, self.timeout_generation
        await asyncio.to_thread(self.kernel.install_kernel_rules, rule_services(cfg), bindings,
                                cfg.queue, timeouts, fresh, generation)
        if fresh:           # the predecessor's objects, held for the flows adopted
            self.timeout_gc.switched(left)
        elif timeouts is not None:
            self.timeout_gc.switched(generation_names(self.timeout_generation))
        if timeouts is not None:
            self.timeouts, self.timeout_generation = timeouts, generation
        if fresh:
            self.drop_counters.reset()
        self.loaded = True

    async def reload(self, old: NodeConfig, new: NodeConfig) -> None:
        """Before the engine takes `new`: its bindings in the maps, its services in the sets.
        The loaded table is refilled, never replaced.  A change of [timeouts] adds the next
        generation of timeout policies in the same transaction: new flows get it; flows
        already in conntrack keep the policy they started with (an nft object cannot be
        changed in place, and ctnetlink cannot attach another one to an entry)."""
        if self.loaded:
            before = self.timeout_generation
            await self._load(new, fresh=False)
            if self.timeout_generation != before:
                log.info("reload: [timeouts] changed: new kernel-mode flows get them (policy "
                         "generation %d); flows already in conntrack keep theirs until they end",
                         self.timeout_generation)
        elif kernel_services(new):
            await self._load(new, fresh=True)

    async def stop(self) -> None:
        await self.drop_counters.stop()
        await self.timeout_gc.stop()
        await self.expiry.stop()
        await self.repairs.stop()
        if self.loaded:
            await asyncio.to_thread(self.kernel.remove_kernel_rules)
            self.loaded = False
        if self.events is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.events.fileno())
            self.events.close()
            self.events = None

    # -- events ------------------------------------------------------------------------------

    def on_readable(self) -> None:
        """One bounded read of the event socket (the loop calls again while more waits).
        Never raises: an exception out of a reader callback can cost the reader itself."""
        try:
            self._read_once()
        except Exception:
            self.stats["read_errors"] += 1
            if self.stats["read_errors"] <= 10:
                log.exception("conntrack events: reading failed; the view is rebuilt from a dump")
            self.flows.overrun()
            self._start_resync()

    def _read_once(self) -> None:
        self.stats["event_batches"] += 1
        self.slices.run(self._read_slice)
        if getattr(self.events, "empty", True):
            self.timeout_gc.read_empty()
        if self._want_dump and getattr(self.events, "empty", True):
            # only now: until its queue is read empty the kernel drops every event for it (no
            # further ENOBUFS), and a dump taken before would miss those (test_kernel_overrun)
            self._want_dump = False
            self._start_resync()
        self.account()

    def _read_slice(self, limit: int) -> bool:
        """At most `limit` datagrams of events, applied (or held during a dump); whether
        more wait in the socket."""
        try:
            msgs, overrun = self.events.read(limit)
        except OSError as exc:
            self._on_error(f"conntrack events: {exc}")
            msgs, overrun = [], True
        if self.repairs.repair is not None:
            self.repairs.repair.hold(msgs)
        elif self._held is not None:
            self._held += msgs
        else:
            for m in msgs:
                self.flows.apply(m, self.clock())
        if overrun:
            self.flows.overrun()
            self._want_dump = True
            self._rearm()
            return False
        return not getattr(self.events, "empty", True)

    def _rearm(self) -> None:
        """Register the reader again.  An overrun leaves an error on the socket (POLLERR)
        until recv reports it, and libuv (uvloop) stops polling a descriptor that reports
        POLLERR without calling back: the reader would be gone for good."""
        if self.events is not None and self._loop is not None:
            self._loop.remove_reader(self.events.fileno())
            self._loop.add_reader(self.events.fileno(), self.on_readable)

    def poll(self) -> None:
        """From the node's tick: one bounded read whether or not the loop saw the socket
        readable (after an overrun it may not), which also re-registers the reader when it
        finds the overrun, and the counts of flows whose event never came."""
        if self.events is not None:
            self.on_readable()
        self.timeout_gc.poll(self.repairs.repair is not None)
        self.expiry.poll(self.repairs.repair is not None)

    def _start_resync(self) -> None:
        self.repairs.start()

    def resync_now(self) -> None:
        """Rebuild the view from a dump (e.g. on the operator's request)."""
        self._start_resync()

    # -- accounting --------------------------------------------------------------------------

    def _handed_over(self, svc: Any, dest: Any, mark: int, now: float) -> None:
        key = (svc.proto, svc.vip, svc.port, mark)
        self.pending.setdefault(key, collections.deque()).append(now)
        dest.inactive += 1
        dest.update_overload()
        self.flows.dirty.add(key)

    def _seen(self, msg: ct.Message, flow: Any) -> None:
        if msg.event != "new" or flow is None:
            return
        o = msg.ct.orig
        if o is None:
            return
        waiting = self.pending.get((o.proto, o.dst, o.dport, flow.mark))
        if waiting:
            waiting.popleft()

    def _pending(self, key: tuple[int, bytes, int, int], now: float) -> int:
        waiting = self.pending.get(key)
        if not waiting:
            return 0
        while waiting and waiting[0] < now - PENDING_FOR:
            waiting.popleft()
        return len(waiting)

    def account(self) -> None:
        """Set the active/inactive counts of the real servers whose kernel flows changed."""
        dirty = self.flows.take_dirty()
        seen = set()
        now = self.clock()
        for key, waiting in self.pending.items():     # those timing out change counts too
            if waiting and waiting[0] < now - PENDING_FOR:
                dirty.add(key)
        marks = self.engine.marks
        for proto, vip, vport, mark in dirty:
            svc = self.engine.services.get((proto, vip, vport))
            b = marks.binding(mark)
            if svc is None or b is None or svc.forwarding != "kernel":
                continue
            dest = svc.find_dest(ipaddress.ip_address(b.rs_addr).packed, b.rs_port)
            if dest is None or id(dest) in seen:
                continue
            seen.add(id(dest))
            active = inactive = 0
            for m in marks.marks_of(b.rs_addr, b.rs_port):
                a, i = self.flows.service_counts(proto, vip, vport, m)
                active += a
                inactive += i + self._pending((proto, vip, vport, m), now)
            dest.active, dest.inactive = active, inactive
            dest.update_overload()

    # -- deleting flows ----------------------------------------------------------------------

    async def expire_removed(self, old: NodeConfig, new: NodeConfig) -> int:
        """After a reload: delete the kernel flows the engine path would expire with it, as
        director.ctl does for its table: every flow of a kernel-mode service the new config
        no longer has, and with `removed_server_conns = "expire"` (the new file's value)
        those of its removed real servers.  A weight of 0 or a drain only stops new flows,
        as IPVS quiescing does; their flows go on."""
        wanted = {_key(s): s for s in kernel_services(new)}
        doomed: list[ct.Tuple] = []
        for s in kernel_services(old):
            key = _key(s)
            now = wanted.get(key)
            if now is None:
                gone = [(r.addr, r.port) for r in s.real_servers]
                if s.sorry_server is not None:
                    gone.append(s.sorry_server)
            elif new.removed_server_conns == "expire":
                keep = {(str(ipaddress.ip_address(r.addr)), r.port) for r in now.real_servers}
                gone = [(r.addr, r.port) for r in s.real_servers
                        if (str(ipaddress.ip_address(r.addr)), r.port) not in keep]
            else:
                continue
            marks: set[int] = set()
            for addr, port in gone:
                marks |= self.engine.marks.marks_of(addr, port)
            doomed += [t for t in self.flows.flows_of(marks) if (t.proto, t.dst, t.dport) == key]
        n = await self.delete(doomed)
        if doomed:
            log.info("reload: %d kernel flows of removed services or real servers deleted "
                     "(%d were still in conntrack)", len(doomed), n)
        return n

    def flows_to(self, svc_key: tuple[int, bytes, int], dests: Iterable[Any]) -> list[ct.Tuple]:
        """The kernel flows of service `svc_key` bound to one of `dests`."""
        marks = set()
        for d in dests:
            marks |= self.engine.marks.marks_of(d.addr_str, d.port)
        proto, vip, vport = svc_key
        return [t for t in self.flows.flows_of(marks)
                if (t.proto, t.dst, t.dport) == (proto, vip, vport)]

    async def entries(self, tuples: list[ct.Tuple]) -> dict[ct.Tuple, ct.Conntrack]:
        """These flows as the kernel holds them now (GET /conns), asked in a worker thread."""
        return await asyncio.to_thread(self.kernel.get_conntrack, tuples)

    async def delete(self, tuples: list[ct.Tuple]) -> int:
        """Delete these flows from the kernel (their DESTROY events update the view)."""
        if not tuples:
            return 0
        n = await asyncio.to_thread(self.kernel.delete_conntrack, tuples)
        self.stats["deleted"] += n
        return n
