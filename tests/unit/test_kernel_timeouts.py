"""Old `ct timeout` generations: held while a flow may use them, deleted after
(director.kernel_timeouts.RetiredTimeouts, tandem.kernel_timeout_gc through the kernel
path against the fake kernel, time injected)."""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress

from director.engine import Engine
from director.kernel_rules import MARK_BASE
from director.kernel_timeouts import SWITCH_GRACE, SWITCH_WINDOW_MAX, RetiredTimeouts
from proto import ctnetlink as ct
from tandem.kernel_mode import KernelPath
from tandem.kernel_timeout_gc import COLLECT_EVERY, generation_names
from tests.fake_kernel import FakeKernel
from tests.helpers import CLIENT, LADDRS, RS, VIP
from tests.unit.test_kernel_mode import kernel_config

GEN1 = ["tcp4", "tcp6", "udp4", "udp6"]


def test_a_retired_generation_is_released_once_its_flows_and_its_window_are_gone():
    r = RetiredTimeouts()
    r.retire(GEN1, {1, 2}, 100.0)
    r.seen_new(3)                                  # its first packet may have met the old rule
    r.read_empty(100.0 + SWITCH_GRACE / 2)         # too soon: the window stays open
    assert r.window_open and r.collect() == []
    r.read_empty(100.0 + SWITCH_GRACE)
    r.seen_new(4)                                  # after the window: the new generation's
    assert not r.window_open and r.collect() == []
    r.ended(1)
    r.ended(2)
    r.ended(4)
    assert r.collect() == [] and r.held() == sorted(GEN1)
    r.ended(3)                                     # the last flow that may use it ended
    assert r.collect() == sorted(GEN1) and r.held() == []


def test_a_repair_holds_every_retired_generation_for_the_flows_it_leaves_in_the_view():
    r = RetiredTimeouts()
    r.retire(["tcp4_2"], (), 0.0)
    r.retire(["tcp4_3"], {7, 9}, 5.0)
    r.read_empty(10.0)
    r.resynced({7, 8})      # 8: its NEW event was lost; 9 left the view unseen
    r.ended(7)
    assert r.collect() == []
    r.ended(8)
    assert r.collect() == ["tcp4_2", "tcp4_3"] and r.held() == []


def test_under_sustained_load_the_window_closes_by_time_alone():
    """The event socket is never read empty: the window closes SWITCH_WINDOW_MAX after
    the switch all the same, and the flows seen new after it are not held."""
    r = RetiredTimeouts()
    r.retire(GEN1, {1}, 100.0)
    r.tick(100.0 + SWITCH_WINDOW_MAX - 0.5)
    r.seen_new(2)
    assert r.window_open
    r.tick(100.0 + SWITCH_WINDOW_MAX)
    assert not r.window_open
    for k in range(3, 1003):
        r.seen_new(k)
    assert r.flows_held() == 2
    r.ended(1)
    r.ended(2)
    assert r.collect() == sorted(GEN1)


class CountingRows(dict):
    """The view's rows, counting every look at them from Python (get, iteration)."""
    looks = 0

    def get(self, *a):
        CountingRows.looks += 1
        return super().get(*a)

    def items(self):
        CountingRows.looks += len(self)
        return super().items()

    def __iter__(self):
        CountingRows.looks += len(self)
        return super().__iter__()


def test_the_gcs_look_does_not_grow_with_the_flows_held():
    """At every COLLECT_EVERY tick, the look for objects no flow uses asks each retired set
    whether it is empty; it walks none of the flows held (a walk of 1M rows every 2 s took
    904 ms).  Flows leave the sets at their end, the DESTROY or the expiry's retirement."""
    from director.kernel_flows import KernelFlows
    from proto.flow_table import FlowTable
    from tandem.kernel_timeout_gc import TimeoutGc

    async def go():
        now = [0.0]
        table = FlowTable()
        table.rows = CountingRows()
        flows = KernelFlows(table)
        kernel = FakeKernel()
        kernel.timeout_objects = set(GEN1)
        gc = TimeoutGc(kernel, flows, lambda: now[0], lambda m: None)
        for port in range(20000, 25000):
            flows.apply(_msg("new", port), now[0])
        gc.switched(GEN1)
        gc.read_empty()
        now[0] += SWITCH_WINDOW_MAX
        CountingRows.looks = 0
        for _ in range(5):
            now[0] += COLLECT_EVERY
            gc.poll(False)
        assert CountingRows.looks == 0 and gc.retired.held() == sorted(GEN1)
        for port in range(20000, 25000):
            flows.apply(_msg("destroy", port), now[0])
        assert gc.retired.flows_held() == 0
        now[0] += COLLECT_EVERY
        gc.poll(False)
        assert gc._task is not None
        await gc._task
        assert gc.removed == len(GEN1) and kernel.timeout_objects == set()
    asyncio.run(go())


def test_a_repairs_walk_runs_in_steps_and_lets_go_of_the_flows_that_left_unseen():
    from director.kernel_flows import RESYNC_STEP, KernelFlows
    from tandem.kernel_timeout_gc import TimeoutGc

    now = [0.0]
    flows = KernelFlows()
    gc = TimeoutGc(FakeKernel(), flows, lambda: now[0], lambda m: None)
    for port in range(20000, 21000):
        flows.apply(_msg("new", port), now[0])
    gc.switched(GEN1)
    now[0] += SWITCH_WINDOW_MAX
    gc.poll(False)
    dump = [_msg("new", p).ct for p in range(20500, 21000)]   # 20000-20499 ended unseen
    steps = flows.resync_steps(dump, step=RESYNC_STEP)
    walked = 0
    try:
        while True:
            next(steps)
            walked += gc._sweep is not None
            if walked == 1:
                flows.apply(_msg("destroy", 20999), now[0])     # ends during the walk
    except StopIteration:
        pass
    assert walked >= 2, "the walk of the view is done in steps"
    assert gc.retired.flows_held() == 499 and gc._sweep is None


def _msg(kind: str, port: int, mark: int = MARK_BASE | 1) -> ct.Message:
    mtype, flags = {"new": (ct.MSG_NEW, ct.NLM_F_CREATE), "destroy": (ct.MSG_DELETE, 0)}[kind]
    orig = ct.Tuple(6, ipaddress.ip_address(CLIENT).packed, ipaddress.ip_address(VIP).packed,
                    port, 80)
    return ct.Message(mtype, flags, 0, 2, ct.Conntrack(orig=orig, mark=mark,
                                                       tcp=ct.TcpInfo(ct.TCP_CT_ESTABLISHED)))


def test_a_timeouts_reload_deletes_the_old_generation_when_its_last_flow_ends():
    """tcp_established 900 -> 60 by a reload while one flow runs: generation 1 stays for it
    (deleting it would put the flow on conntrack's 5 days), generation 2 gets new flows;
    when the flow ends, the next look deletes generation 1.  A restart over a table that
    holds generation 1 holds it for the flows adopted the same way."""
    async def go():
        now = [0.0]
        kernel = FakeKernel()
        cfg = kernel_config()
        kp = KernelPath(Engine(cfg), kernel, 0, clock=lambda: now[0])
        await kp.start(cfg)
        ev = kernel.events[-1]

        def turn(dt: float) -> None:
            now[0] += dt
            kp.on_readable()
            kp.poll()
        ev.push([_msg("new", 40000)])
        turn(0.1)
        assert kp.flows.stats["new"] == 1
        faster = dataclasses.replace(cfg, timeouts={**dict(cfg.timeouts), "tcp_established": 60.0})
        await kp.reload(cfg, faster)
        assert kp.timeout_generation == 2
        assert kernel.timeout_objects == set(GEN1) | set(generation_names(2))
        ev.push([_msg("new", 40001)])              # read within the window: held for gen 1 too
        for _ in range(10):
            turn(COLLECT_EVERY)
            await asyncio.sleep(0)
        assert kernel.timeout_objects == set(GEN1) | set(generation_names(2))
        ev.push([_msg("destroy", 40000)])
        turn(COLLECT_EVERY)
        await asyncio.sleep(0)
        assert set(GEN1) <= kernel.timeout_objects, "40001 may still use generation 1"
        ev.push([_msg("destroy", 40001)])
        turn(COLLECT_EVERY)
        for _ in range(3):
            await asyncio.sleep(0.01)
        assert kernel.timeout_objects == set(generation_names(2))
        assert kp.describe()["timeout_objects_removed"] == 4
        assert kp.describe()["timeout_objects_held"] == []
        await kp.stop()
    asyncio.run(go())


def test_a_start_over_a_predecessors_objects_deletes_them_when_the_flows_it_adopted_end():
    async def go():
        now = [0.0]
        kernel = FakeKernel()
        kernel.timeout_objects = set(GEN1)                 # the predecessor's generation 1
        adopted = _msg("new", 40000).ct._replace(
            reply=ct.Tuple(6, ipaddress.ip_address(RS[0]).packed,
                           ipaddress.ip_address(LADDRS[0]).packed, 8080, 40000))
        kernel.conntrack = [adopted]
        cfg = kernel_config()
        kp = KernelPath(Engine(cfg), kernel, 0, clock=lambda: now[0])
        await kp.start(cfg)
        assert kp.flows.stats["adopted"] == 1 and kp.timeout_generation == 2
        ev = kernel.events[-1]

        async def turn() -> None:
            now[0] += COLLECT_EVERY
            kp.on_readable()
            kp.poll()
            for _ in range(3):
                await asyncio.sleep(0.01)
        await turn()
        await turn()
        assert set(GEN1) < kernel.timeout_objects, "the adopted flow may use generation 1"
        ev.push([_msg("destroy", 40000)])
        await turn()
        assert kernel.timeout_objects == set(generation_names(2))
        await kp.stop()
    asyncio.run(go())


def test_a_failed_start_dump_holds_the_predecessors_objects_until_a_repair_finds_its_flows():
    """The dump at start fails: the view is empty, but the predecessor's flows still use its
    objects.  The view is marked for a repair, nothing is deleted meanwhile, and the repair's
    dump (taken once the socket is read empty) brings the flows in and holds the objects
    for them until they end."""
    async def go():
        now = [0.0]
        kernel = FakeKernel()
        kernel.timeout_objects = set(GEN1)                 # the predecessor's generation 1
        adopted = _msg("new", 40000).ct._replace(
            reply=ct.Tuple(6, ipaddress.ip_address(RS[0]).packed,
                           ipaddress.ip_address(LADDRS[0]).packed, 8080, 40000))
        kernel.conntrack = [adopted]
        kernel.fail("dump_conntrack", OSError("ENOBUFS"))
        cfg = kernel_config()
        kp = KernelPath(Engine(cfg), kernel, 0, clock=lambda: now[0], on_error=lambda m: None)
        await kp.start(cfg)
        assert len(kp.flows.flows) == 0 and kp.flows.needs_resync
        ev = kernel.events[-1]

        async def turn() -> None:
            now[0] += COLLECT_EVERY
            kp.on_readable()
            kp.poll()
            for task in (kp.repairs._task, kp.timeout_gc._task):   # done, however busy the machine
                if task is not None:
                    await task
        for _ in range(4):
            await turn()
            assert set(GEN1) < kernel.timeout_objects, "the predecessor's flow uses generation 1"
        assert adopted.orig in kp.flows.flows and not kp.flows.needs_resync
        assert kp.describe()["dump_failures"] == 1 and kp.describe()["dump_repairs"] == 1
        ev.push([_msg("destroy", 40000)])
        await turn()
        assert kernel.timeout_objects == set(generation_names(2))
        await kp.stop()
    asyncio.run(go())
