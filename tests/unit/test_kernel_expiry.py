"""Kernel flows past their timeout: the deadline wheel (director.kernel_expiry), the view
asking and retiring (KernelFlows.due/checked), and the node's checks through the fake
kernel (tandem.kernel_expiry), all with injected time."""
from __future__ import annotations

import asyncio
import ipaddress

from director.engine import Engine
from director.kernel_expiry import TICK, FlowDeadlines
from director.kernel_flows import KernelFlows
from proto import ctnetlink as ct
from proto.flow_table import SOURCE, VIEW
from tandem.kernel_expiry import CHECK_RETRY
from tandem.kernel_mode import KernelPath
from tests.fake_kernel import FakeKernel
from tests.helpers import CLIENT, VIP
from tests.unit.test_kernel_flows import A, event, orig
from tests.unit.test_kernel_mode import kernel_config


def test_the_wheel_gives_each_key_once_at_its_latest_deadline():
    """Deadlines live in the view's rows; the slots hold keys (IPv6 flows' long keys too)."""
    rows = {k: VIEW for k in (1, 2, 3, 4)}
    long_key = 1 << 70
    rows[long_key] = VIEW | SOURCE
    w = FlowDeadlines(rows)
    w.arm(1, 5.0)
    w.arm(2, 5.0)
    w.arm(3, 30.0)
    w.arm(long_key, 7.0)
    w.arm(1, 12.0)                  # later: stays filed where it was, re-filed when due
    w.arm(3, 2.0)                   # earlier: filed again
    rows[2] = SOURCE                # the view let go of it (its fields, deadline too)
    assert w.due(1.9) == [] and w.due(2.0) == [3]
    assert w.due(7.0) == [long_key] and rows[long_key] == VIEW | SOURCE
    assert w.due(11.0) == [] and w.armed(1) and not w.armed(3)
    assert w.due(100.0) == [1] and w.filed() == 0     # a gap wider than the slots: no walk
    w.arm(4, 100.0 + TICK / 2)
    assert w.due(100.0 + TICK) == [4] and w.due(1000.0) == []
    w.arm(4, 990.0)                 # a deadline already passed: due at the next look
    assert w.due(1001.0) == [4]


def _with_timeout(msg: ct.Message, seconds: int) -> ct.Message:
    return msg._replace(ct=msg.ct._replace(timeout=seconds))


def test_a_flow_past_its_deadline_is_retired_when_the_kernel_no_longer_holds_it():
    """The last event said 3 s left (TIME_WAIT); at 3 s the view asks the kernel, which no
    longer holds one flow and still holds the other (a packet pushed it on unseen): the
    first leaves the view and its counts, its watchers hear its end; the second is armed
    from the time it has left.  The first's DESTROY, when GC sends it, is counted late."""
    flows, told = KernelFlows(), []
    flows.watch(lambda m, f: told.append((m.event, m.ct.orig, f)))
    flows.apply(_with_timeout(event("new", 1, ct.TCP_CT_TIME_WAIT), 3), now=10.0)
    flows.apply(_with_timeout(event("new", 2, ct.TCP_CT_TIME_WAIT), 3), now=10.0)
    flows.apply(event("new", 3, ct.TCP_CT_ESTABLISHED), now=10.0)     # no timeout: not armed
    assert flows.due(12.9) == []
    due = flows.due(13.0)
    assert sorted(due) == [orig(1), orig(2)]
    still = ct.Conntrack(orig=orig(2), timeout=2, mark=A, tcp=ct.TcpInfo(ct.TCP_CT_TIME_WAIT))
    assert flows.checked(due, {orig(2): still}, 13.0) == 1
    assert orig(1) not in flows.flows and orig(2) in flows.flows and len(flows.flows) == 2
    assert flows.counts[A] == [1, 1] and told[-1] == ("destroy", orig(1), None)
    assert flows.stats["expired"] == 1
    flows.apply(event("destroy", 1))
    assert (flows.stats["destroyed"], flows.stats["late_destroys"]) == (0, 1)
    assert flows.due(14.9) == [] and flows.due(15.0) == [orig(2)]
    # an event between the question and the answer (a state change) keeps the flow
    flows.apply(_with_timeout(event("update", 2, ct.TCP_CT_ESTABLISHED), 900), now=15.15)
    assert flows.checked([orig(2)], {}, 15.2) == 0 and orig(2) in flows.flows
    assert flows.counts[A] == [2, 0]
    flows.apply(event("destroy", 2))
    assert flows.stats["destroyed"] == 1 and flows.due(2000.0) == []


def test_a_resync_arms_the_deadlines_from_the_dump():
    flows = KernelFlows()
    flows.apply(_with_timeout(event("new", 1), 60), now=0.0)
    entries = [ct.Conntrack(orig=orig(2), timeout=5, mark=A, tcp=ct.TcpInfo(ct.TCP_CT_FIN_WAIT)),
               ct.Conntrack(orig=orig(3), timeout=5, mark=A, tcp=ct.TcpInfo(ct.TCP_CT_ESTABLISHED))]
    flows.resync(entries, now=100.0)
    assert orig(1) not in flows.flows and flows.due(104.0) == [] and flows.due(105.0) == [orig(2)]
    assert flows.due(2000.0) == [], "an ESTABLISHED flow's end is left to its events and GC"


def test_an_established_flow_keeps_no_deadline_in_its_row():
    """ESTABLISHED: data refreshes it without events, and it mostly ends by a FIN or RST
    (events): its row keeps no deadline (the int stays as small as without one) and it is
    never asked about; its closing states are."""
    flows = KernelFlows()
    flows.apply(_with_timeout(event("new", 1, ct.TCP_CT_SYN_SENT), 60), now=0.0)
    k = flows.table.key(orig(1))
    assert flows.deadlines.armed(k)
    flows.apply(_with_timeout(event("update", 1, ct.TCP_CT_ESTABLISHED), 900), now=0.5)
    assert not flows.deadlines.armed(k) and flows.table.rows[k] < 1 << 177
    assert flows.due(1000.0) == []
    flows.apply(_with_timeout(event("update", 1, ct.TCP_CT_FIN_WAIT), 3), now=1000.0)
    assert flows.due(1003.0) == [orig(1)]


def test_the_node_retires_an_expired_kernel_flow_before_conntracks_gc_reports_it():
    """Through the kernel path: a flow's last event says 3 s left; 3 s later the node's
    tick asks the kernel (get_conntrack), which no longer has it: the view and the real
    server's inactive count drop to 0 with no DESTROY event."""
    async def go():
        now = [0.0]
        kernel = FakeKernel()
        cfg = kernel_config()
        eng = Engine(cfg)
        kp = KernelPath(eng, kernel, 0, clock=lambda: now[0])
        await kp.start(cfg)
        svc = next(s for s in eng.services.values() if s.forwarding == "kernel")
        mark = eng.marks.mark_for(svc.dests[0].addr_str, svc.dests[0].port, cfg.services[0].laddrs[0])
        t = ct.Tuple(6, ipaddress.ip_address(CLIENT).packed, ipaddress.ip_address(VIP).packed, 40000, 80)
        entry = ct.Conntrack(orig=t, timeout=3, mark=mark, tcp=ct.TcpInfo(ct.TCP_CT_TIME_WAIT))
        kernel.conntrack = [entry]
        kernel.events[-1].push([ct.Message(ct.MSG_NEW, ct.NLM_F_CREATE, 0, 2, entry)])
        kp.on_readable()
        assert (svc.dests[0].active, svc.dests[0].inactive) == (0, 1)
        now[0] = 2.0
        kp.poll()
        await asyncio.sleep(0.01)
        assert not any(op == "get_conntrack" for op, _ in kernel.calls)
        now[0] = 3.0
        kernel.conntrack = [entry._replace(timeout=1)]
        kp.poll()
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert t in kp.flows.flows                          # pushed on: armed again
        now[0] = 4.0
        kernel.conntrack = []                               # expired (and reaped by the GET)
        kp.poll()
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert [a for op, a in kernel.calls if op == "get_conntrack"] == [((t,),), ((t,),)]
        assert len(kp.flows.flows) == 0 and (svc.dests[0].active, svc.dests[0].inactive) == (0, 0)
        d = kp.describe()
        assert (d["flows"], d["expired"], d["destroyed"], d["expiry_checks"]) == (0, 1, 0, 2)
        await kp.stop()
    asyncio.run(go())


def test_a_get_whose_answer_does_not_decode_is_counted_and_its_flows_asked_again():
    """ct.decode refuses the GET's answer (CtnetlinkError, a ValueError): the failure is
    counted, the flows due() disarmed are armed again and asked CHECK_RETRY s later."""
    async def go():
        now = [0.0]
        kernel = FakeKernel()
        cfg = kernel_config()
        eng = Engine(cfg)
        kp = KernelPath(eng, kernel, 0, clock=lambda: now[0], on_error=lambda m: None)
        await kp.start(cfg)
        svc = next(s for s in eng.services.values() if s.forwarding == "kernel")
        mark = eng.marks.mark_for(svc.dests[0].addr_str, svc.dests[0].port, cfg.services[0].laddrs[0])
        t = ct.Tuple(6, ipaddress.ip_address(CLIENT).packed, ipaddress.ip_address(VIP).packed, 40000, 80)
        entry = ct.Conntrack(orig=t, timeout=3, mark=mark, tcp=ct.TcpInfo(ct.TCP_CT_TIME_WAIT))
        kernel.events[-1].push([ct.Message(ct.MSG_NEW, ct.NLM_F_CREATE, 0, 2, entry)])
        kp.on_readable()

        async def at(when: float) -> None:
            now[0] = when
            kp.poll()
            for _ in range(5):
                await asyncio.sleep(0.01)
        kernel.fail("get_conntrack", ct.CtnetlinkError("attribute runs past the message"))
        await at(3.0)
        d = kp.describe()
        assert (d["expiry_checks"], d["expiry_check_failures"]) == (1, 1)
        assert t in kp.flows.flows and kp.flows.deadlines.armed(kp.flows.table.find(t)[0])
        await at(3.0 + CHECK_RETRY)                         # asked again: gone from the kernel
        d = kp.describe()
        assert (d["expiry_checks"], d["expiry_check_failures"], d["expired"]) == (2, 1, 1)
        assert t not in kp.flows.flows and svc.dests[0].inactive == 0
        await kp.stop()
    asyncio.run(go())


def test_a_full_slot_is_drained_over_several_calls_with_a_limit_and_no_key_is_lost():
    """due(now, limit) looks at `limit` filings at most: a slot of 10k keys (IPv6 long keys
    and stale filings among them) comes out over several calls, each key once; a later
    slot waits for the full one; a key armed meanwhile is not lost either."""
    long_keys = [(1 << 70) + i for i in range(50)]
    keys = list(range(1, 10_001)) + long_keys
    rows = {k: VIEW for k in keys}
    w = FlowDeadlines(rows)
    for k in keys:
        w.arm(k, 5.0)
    for k in range(1, 101):
        w.arm(k, 3.0)               # earlier: filed again, their slot-5 filings go stale
    rows[20_000] = VIEW
    w.arm(20_000, 6.0)
    assert w.filed() == len(keys) + 100 + 1
    got: list[int] = []
    calls = 0
    while True:
        out = w.due(7.0, limit=1000)
        calls += 1
        assert len(out) <= 1000
        if calls == 3:
            rows[30_000] = VIEW
            w.arm(30_000, 6.5)      # armed while slot 5 is half drained
        if not out and calls > 3:
            break
        got += out
    assert sorted(got) == sorted(keys + [20_000, 30_000]) and len(got) == len(set(got))
    assert calls > 10 and w.filed() == 0
    assert got.index(20_000) > max(got.index(k) for k in keys)     # slot 6 after slot 5


def test_the_views_due_passes_the_limit_on_and_loses_no_flow():
    flows = KernelFlows()
    for port in range(1, 301):
        flows.apply(_with_timeout(event("new", port, ct.TCP_CT_TIME_WAIT), 3), now=0.0)
    parts = [flows.due(10.0, limit=100) for _ in range(4)]
    assert [len(p) for p in parts] == [100, 100, 100, 0]
    assert sorted(t.sport for p in parts for t in p) == list(range(1, 301))


def test_a_new_flow_that_is_established_within_the_tick_leaves_no_filing_behind():
    """A NEW event gives the flow its SYN timeout (120 s here); its ESTABLISHED, which keeps
    no deadline, follows within the same tick.  Filed at once, the SYN deadline stayed in
    its slot, stale, for those 120 s: 8 bytes a flow for every flow opened in them (1M
    flows: 168 bytes a flow by RSS against 146).  Now it is gone at the next look, and a
    flow still opening then is filed and comes due at its deadline."""
    flows = KernelFlows()
    for port in range(1, 1001):
        flows.apply(_with_timeout(event("new", port), 120), now=10.0)
        if port != 7:                                   # 7 never gets an answer
            flows.apply(event("update", port, ct.TCP_CT_ESTABLISHED), now=10.0)
    assert flows.due(11.0) == [] and flows.deadlines.filed() == 1
    assert flows.due(129.0) == [] and flows.due(130.0) == [orig(7)]
