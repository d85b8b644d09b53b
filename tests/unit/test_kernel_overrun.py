"""When the repair dump after lost conntrack events is taken (tandem.kernel_mode).

The kernel's netlink behaviour it follows (net/netlink/af_netlink.c): when an event does
not fit a listener's receive buffer, the socket becomes "congested", ENOBUFS is reported
once, and from then on every event for that socket is dropped, with no further ENOBUFS,
until the listener has read its queue empty.  So:
- the dump is asked for only once the socket has been read empty after the ENOBUFS (a
  dump taken earlier misses the events dropped after its snapshot, and nothing would
  report them);
- events lost while a dump runs may postdate its snapshot: another dump follows.
Both were seen in the lab (tests/lab/test_kernel_burst.py): without them the view and the
backup's table kept flows as ESTABLISHED that the master's conntrack had closed."""
from __future__ import annotations

import asyncio

from proto import ctnetlink as ct
from tests.fake_kernel import FakeKernel
from tests.unit.test_kernel_node import KLADDR, RS, event, kdests, make_node, settle


def test_the_dump_waits_until_the_socket_is_read_empty():
    async def go():
        kernel = FakeKernel()
        node = make_node(kernel)
        await node.start()
        try:
            ev = kernel.events[0]
            m0 = node.engine.marks.mark_for(RS[0], 8080, KLADDR)
            left_at_dump = []
            dump = kernel.dump_conntrack

            def counting_dump():
                left_at_dump.append(len(ev.pending))
                return dump()
            kernel.dump_conntrack = counting_dump
            kernel.conntrack = [event("update", p, m0, ct.TCP_CT_ESTABLISHED).ct
                                for p in range(1, 201)]
            ev.overrun()
            for p in range(1, 201):       # what was queued before the kernel gave up
                ev.push([event("new", p, m0, ct.TCP_CT_SYN_SENT)])
            for _ in range(20):
                await settle()
            assert left_at_dump == [0]
            assert node.kernel_path.stats["dump_repairs"] == 1
            d0 = kdests(node)[0]
            assert (d0.active, d0.inactive) == (200, 0)      # the table, not the stale events
        finally:
            await node.stop()
    asyncio.run(go())


def test_events_lost_while_a_dump_runs_bring_another_dump():
    async def go():
        kernel = FakeKernel()
        node = make_node(kernel)
        await node.start()
        try:
            ev = kernel.events[0]
            m0 = node.engine.marks.mark_for(RS[0], 8080, KLADDR)
            node.kernel_path.repairs.dump_spacing = 0.0
            opened = kernel.open_ct_dump

            def first_held_back():
                d = opened()
                if len(kernel.dumps) == 1:
                    d.pause()               # its snapshot is taken, its datagrams wait
                return d
            kernel.open_ct_dump = first_held_back
            kernel.conntrack = [event("update", 1, m0, ct.TCP_CT_ESTABLISHED).ct]
            ev.overrun()
            while not kernel.dumps:
                await asyncio.sleep(0.01)
            # the first dump's snapshot is taken; then flow 1 closes and the event is lost
            ev.overrun()
            await settle()
            kernel.conntrack = []
            kernel.dumps[0].resume()
            for _ in range(20):
                await settle()
            path = node.kernel_path
            assert path.flows.stats["overruns"] == 2
            assert path.stats["dump_repairs"] == 2
            assert path.flows.flows == {}
            d0 = kdests(node)[0]
            assert (d0.active, d0.inactive) == (0, 0)
        finally:
            await node.stop()
    asyncio.run(go())


def test_overruns_soon_after_a_repair_wait_for_one_more_dump_together():
    """Repeated overruns are coalesced: within dump_spacing of the last repair they are
    counted, and one dump after the spacing repairs them all (conntrackd likewise waits
    NetlinkOverrunResync before its dump), instead of a dump for each back to back."""
    async def go():
        kernel = FakeKernel()
        node = make_node(kernel)
        await node.start()
        try:
            path = node.kernel_path
            path.repairs.dump_spacing = 0.3
            ev = kernel.events[0]
            m0 = node.engine.marks.mark_for(RS[0], 8080, KLADDR)
            kernel.conntrack = [event("update", 1, m0, ct.TCP_CT_ESTABLISHED).ct]
            ev.overrun()
            await settle()
            assert len(kernel.dumps) == 1 and path.stats["dump_repairs"] == 1
            for p in (2, 3, 4):           # three more overruns, each with a flow lost
                kernel.conntrack = kernel.conntrack + [event("update", p, m0, ct.TCP_CT_ESTABLISHED).ct]
                ev.overrun()
                await settle()
            assert len(kernel.dumps) == 1           # none yet: within the spacing
            for _ in range(40):
                await settle()
                if path.stats["dump_repairs"] == 2:
                    break
            await settle()
            assert len(kernel.dumps) == 2 and path.stats["dump_repairs"] == 2
            assert path.flows.stats["overruns"] == 4 and path.stats["dumps_coalesced"] == 1
            assert len(path.flows.flows) == 4 and not path.flows.needs_resync
            assert (kdests(node)[0].active, kdests(node)[0].inactive) == (4, 0)
        finally:
            await node.stop()
    asyncio.run(go())
