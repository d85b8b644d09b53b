"""The repair after lost conntrack events, in bounded slices (director.kernel_repair).

conntrackd answers a netlink overrun with a dump of the table; tandem does the same, but
on the event loop that also sends VRRP adverts, so a repair is cut into steps of at most a
time budget (by an injected clock) and the loop runs its timers between them.  Judged here:
the work per step is bounded, the view is the old one until the whole dump is in and then
equals what a one-shot resync gives, the events read meanwhile are applied after it in
order, and the repair ends in the step that applies the last of them."""
from __future__ import annotations

import ipaddress

from director.kernel_flows import KernelFlows
from director.kernel_repair import Repair
from director.kernel_rules import MARK_BASE
from proto import ctnetlink as ct

CLIENT = ipaddress.ip_address("198.18.0.10").packed
VIP = ipaddress.ip_address("198.18.1.1").packed
MARK = MARK_BASE | 1


def entry(port: int, state: int = ct.TCP_CT_ESTABLISHED, mark: int = MARK) -> ct.Conntrack:
    return ct.Conntrack(orig=ct.Tuple(6, CLIENT, VIP, port, 80), mark=mark, tcp=ct.TcpInfo(state))


def event(kind: str, port: int, state: int | None = ct.TCP_CT_ESTABLISHED) -> ct.Message:
    mtype, flags = {"new": (ct.MSG_NEW, ct.NLM_F_CREATE), "update": (ct.MSG_NEW, 0),
                    "destroy": (ct.MSG_DELETE, 0)}[kind]
    c = entry(port, state) if state is not None else ct.Conntrack(orig=entry(port).orig)
    return ct.Message(mtype, flags, 0, 2, c)


class Clock:
    """Time moves only when read: `tick` per reading, as if each look came after work."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick, self.reads = 0.0, tick, 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.tick
        return self.now


def stale_view() -> KernelFlows:
    """A view that missed events: 3000 flows SYN_SENT, 1000 of them gone from the table."""
    v = KernelFlows()
    for p in range(1, 3001):
        v.apply(event("new", p, ct.TCP_CT_SYN_SENT))
    return v


TABLE = [entry(p) for p in range(1001, 5001)]     # 2000 kept and now ESTABLISHED, 2000 new


def test_each_step_does_bounded_work_and_the_result_equals_a_one_shot_resync():
    oracle = stale_view()
    want = oracle.resync(TABLE)
    view = stale_view()
    before = dict(view.flows)
    clock = Clock(tick=0.001)
    r = Repair(view, clock, budget=0.0025)
    r.add(TABLE[:1500])
    assert not r.step() and view.flows == before     # the dump is not all in: nothing done
    r.add(TABLE[1500:])
    r.dump_done()
    swapped_at = None
    while True:
        reads = clock.reads
        done = r.step()
        # one reading opens the step, one follows each unit of work: at most 3 units here
        assert clock.reads - reads <= 4
        if swapped_at is None and view.flows != before:
            swapped_at = r.steps
        if done:
            break
        assert r.steps < 1000
    assert swapped_at is not None and swapped_at > 10     # the work was spread over turns
    assert r.repaired == want == 2000 + 2000 + 1000       # changed, new, gone
    assert view.flows == oracle.flows
    assert view.counts == oracle.counts and view.by_service == oracle.by_service
    assert view.stats["resyncs"] == 1 and view.stats["repaired"] == want
    assert not view.needs_resync


def test_a_watchers_work_runs_inside_the_steps_not_in_one_go():
    view = stale_view()
    done_units = []

    def watcher(_flows, entries):
        for i in range(0, len(entries), 100):
            done_units.append(len(entries[i:i + 100]))
            yield
    view.watch_resync(watcher)
    clock = Clock(tick=0.001)
    r = Repair(view, clock, budget=0.0025)
    r.add(TABLE)
    r.dump_done()
    per_step = []
    while not r.step():
        per_step.append(len(done_units))
    assert sum(done_units) == len(TABLE)
    grew = [b - a for a, b in zip(per_step, per_step[1:])]
    assert max(grew) <= 3          # never more than the budget's units of it in one step


def test_events_read_meanwhile_are_applied_after_the_dump_in_order():
    view = stale_view()
    clock = Clock(tick=0.001)
    r = Repair(view, clock, budget=0.0025)
    r.add(TABLE)
    r.hold([event("update", 1001, ct.TCP_CT_FIN_WAIT)])
    r.dump_done()
    assert not r.step()
    # more come while it runs: a flow ends, one closes then is destroyed, one is new
    r.hold([event("destroy", 1002, None), event("update", 1003, ct.TCP_CT_CLOSE),
            event("destroy", 1003, None), event("new", 9000)])
    r.hold([event("update", 9000 + i, ct.TCP_CT_SYN_SENT) for i in range(1, 200)])
    while not r.step():
        pass
    assert not r.held
    assert view.flows[entry(1001).orig].tcp_state == ct.TCP_CT_FIN_WAIT
    assert entry(1002).orig not in view.flows and entry(1003).orig not in view.flows
    assert view.flows[entry(9000).orig].active
    assert len(view.flows) == 4000 - 2 + 200


def test_a_failed_dump_leaves_the_view_marked_and_applies_the_held_events():
    view = stale_view()
    view.overrun()
    r = Repair(view, Clock(0.001), budget=0.0025)
    r.add(TABLE[:100])
    r.hold([event("destroy", 1, None)])
    r.dump_failed()
    while not r.step():
        pass
    assert entry(1).orig not in view.flows and len(view.flows) == 2999
    assert view.needs_resync and r.repaired is None and view.stats["resyncs"] == 0


def test_an_interrupted_dump_taken_again_counts_only_the_new_one():
    view = stale_view()
    r = Repair(view, Clock(0.001), budget=1.0)
    r.add(TABLE[:10])
    r.restart()
    r.add(TABLE)
    r.dump_done()
    while not r.step():
        pass
    assert len(view.flows) == len(TABLE)


def test_the_nodes_freezer_counts_kernel_events_and_dump_entries():
    """Kernel mode's decoded events and dump entries move the node's GcFreezer too (a full
    collection over a burst's objects took 100-250 ms in the lab, longer than a 100 ms
    advert interval allows), by their own finer step."""
    import gc
    from types import SimpleNamespace

    from tandem.node import GC_FREEZE_EVERY_KERNEL, GcFreezer
    engine = SimpleNamespace(stats={"conns_new": 0}, sync_stats={"created": 0})
    made = [0]
    freezer = GcFreezer(engine, lambda: made[0])      # type: ignore[arg-type]
    gc.unfreeze()
    try:
        made[0] = GC_FREEZE_EVERY_KERNEL - 1
        freezer.maybe_freeze()
        assert gc.get_freeze_count() == 0
        made[0] = GC_FREEZE_EVERY_KERNEL
        freezer.maybe_freeze()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
