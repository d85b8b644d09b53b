"""The node's kernel-mode wiring (tandem.kernel_mode) against the fake kernel: the event
socket bound before the rules, every mark the engine hands out already in the maps, the
engine-mode rules leaving kernel-mode addresses alone, the conntrack events feeding the
real servers' active/inactive counts (what lc/wlc/sed/nq read), ENOBUFS repaired by a dump,
a reload that refills the maps without replacing the table, exact removal at stop."""
from __future__ import annotations

import asyncio
import ipaddress
import socket

from director.config import parse
from director.engine import Mark
from proto import ctnetlink as ct
from tandem.node import Edges, Node
from tests.fake_kernel import FakeKernel
from tests.helpers import tcp

KVIP, EVIP = "198.18.0.101", "198.18.0.100"
KLADDR, ELADDR = "198.18.2.102", "198.18.2.100"
RS = ["198.18.2.21", "198.18.2.22"]
CLIENT = "198.18.1.10"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def doc(reals=RS, scheduler="lc", api=None, removed="expire") -> dict:
    return {
        "node": {"name": "k", "api": api or f"127.0.0.1:{free_port()}", "tick": 0.01, "state_dir": "",
                 "removed_server_conns": removed},
        "services": [
            {"proto": "tcp", "vip": KVIP, "port": 80, "laddrs": [KLADDR], "forwarding": "kernel",
             "scheduler": scheduler,
             "real_servers": [{"addr": a, "port": 8080} for a in reals]},
            {"proto": "tcp", "vip": EVIP, "port": 80, "laddrs": [ELADDR],
             "real_servers": [{"addr": a, "port": 8080} for a in reals]},
        ],
    }


class Queue:
    def __init__(self, handle, num, clock, bind) -> None:
        pass

    def start(self, loop) -> None:
        pass

    def stop(self) -> None:
        pass


def make_node(kernel: FakeKernel, d: dict | None = None, path=None) -> Node:
    return Node(parse(d or doc(), "k.toml"), path=path, edges=Edges(kernel=kernel, queue=Queue))


def event(kind: str, port: int, mark: int, state: int | None) -> ct.Message:
    mtype, flags = {"new": (ct.MSG_NEW, ct.NLM_F_CREATE), "update": (ct.MSG_NEW, 0),
                    "destroy": (ct.MSG_DELETE, 0)}[kind]
    orig = ct.Tuple(6, ipaddress.ip_address(CLIENT).packed, ipaddress.ip_address(KVIP).packed,
                    port, 80)
    tcp_info = ct.TcpInfo(state) if state is not None else None
    return ct.Message(mtype, flags, 0, 2, ct.Conntrack(orig=orig, mark=mark, tcp=tcp_info))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


def kdests(node: Node):
    svc = next(s for s in node.engine.services.values() if s.forwarding == "kernel")
    return svc.dests


def test_rules_order_marks_in_maps_and_engine_rules_leave_kernel_addresses():
    async def go():
        kernel = FakeKernel()
        node = make_node(kernel)
        await node.start()
        try:
            ops = [op for op, _ in kernel.calls]
            assert ops.index("open_ct_events") < ops.index("install_kernel_rules")
            services, bindings, queue, timeouts = kernel.kernel_rules
            assert [(s.vip, s.port, s.laddrs) for s in services] == [(KVIP, 80, (KLADDR,))]
            assert timeouts["tcp_established"] == 900
            assert kernel.rules == ((EVIP, ELADDR), 0)         # the engine's: not KVIP/KLADDR
            loaded = {b.mark for b in bindings}
            for i in range(6):
                out = node.engine.handle(tcp(CLIENT, KVIP, 40000 + i, 80, "S"), 0.0)
                assert type(out) is Mark and out.mark in loaded
            assert {(b.rs_addr, b.laddr) for b in bindings} == {(a, KLADDR) for a in RS}
        finally:
            await node.stop()
        assert kernel.kernel_rules is None and kernel.events[0].closed
    asyncio.run(go())


def test_events_feed_the_counts_the_schedulers_read_and_overrun_is_repaired():
    async def go():
        kernel = FakeKernel()
        node = make_node(kernel)
        await node.start()
        try:
            m0 = node.engine.marks.mark_for(RS[0], 8080, KLADDR)
            m1 = node.engine.marks.mark_for(RS[1], 8080, KLADDR)
            ev = kernel.events[0]
            ev.push([event("new", 1, m0, ct.TCP_CT_SYN_SENT),
                     event("new", 2, m0, ct.TCP_CT_SYN_SENT)])
            ev.push([event("update", 1, m0, ct.TCP_CT_ESTABLISHED)])
            await settle()
            d0, d1 = kdests(node)
            assert (d0.active, d0.inactive, d1.active, d1.inactive) == (1, 1, 0, 0)
            # lc now prefers the idle real server for the next flows
            out = node.engine.handle(tcp(CLIENT, KVIP, 41000, 80, "S"), 0.0)
            assert out.mark == m1
            ev.push([event("destroy", 2, m0, None)])
            await settle()
            assert (d0.active, d0.inactive) == (1, 0)
            # events lost: counted, and the view rebuilt from the kernel's table
            kernel.conntrack = [event("update", p, m1, ct.TCP_CT_ESTABLISHED).ct for p in (7, 8)]
            ev.overrun()
            await settle()
            flows = node.kernel_path.flows
            assert flows.stats["overruns"] == 1 and node.kernel_path.stats["dump_repairs"] == 1
            assert (d0.active, d0.inactive, d1.active, d1.inactive) == (0, 0, 2, 0)
            assert ("dump_conntrack", ()) in kernel.calls
        finally:
            await node.stop()
    asyncio.run(go())


def test_reload_refills_the_maps_without_replacing_the_table(tmp_path):
    from schema.core import dump_toml
    path = tmp_path / "k.toml"
    api = f"127.0.0.1:{free_port()}"
    path.write_text(dump_toml(doc(api=api)))
    path.chmod(0o600)

    async def go():
        kernel = FakeKernel()
        node = Node(parse(doc(api=api), "k.toml"), path=str(path),
                    edges=Edges(kernel=kernel, queue=Queue))
        await node.start()
        try:
            path.write_text(dump_toml(doc(reals=RS + ["198.18.2.23"], api=api)))
            await node.reload()
            installs = [args for op, args in kernel.calls if op == "install_kernel_rules"]
            assert [a[-1] for a in installs] == [True, False]      # fresh, then refilled
            bindings = kernel.kernel_rules[1]
            assert ("198.18.2.23", KLADDR) in {(b.rs_addr, b.laddr) for b in bindings}
            out = node.engine.handle(tcp(CLIENT, KVIP, 42000, 80, "S"), 0.0)
            assert out.mark in {b.mark for b in bindings}
        finally:
            await node.stop()
    asyncio.run(go())


def test_status_and_metrics_show_the_kernel_flows_and_the_event_counters():
    from director.metrics import collectors, render

    async def go():
        kernel = FakeKernel()
        node = make_node(kernel)
        assert node.kernel_path.describe() is None           # nothing loaded yet
        await node.start()
        try:
            m0 = node.engine.marks.mark_for(RS[0], 8080, KLADDR)
            kernel.events[0].push([event("new", 1, m0, ct.TCP_CT_ESTABLISHED),
                                   event("new", 2, m0, ct.TCP_CT_SYN_SENT)])
            kernel.events[0].overrun()
            kernel.conntrack = [event("update", 1, m0, ct.TCP_CT_ESTABLISHED).ct]
            await settle()
            st = node.state.kernel_stats()
            assert (st["flows"], st["active"], st["inactive"]) == (1, 1, 0)
            assert (st["events"], st["overruns"], st["resyncs"], st["repaired"]) == (2, 1, 1, 1)
            text = render(*collectors(node.engine, node.state))[0].decode()
            for line in ("tandem_kernel_flows 1.0", "tandem_kernel_events_total 2.0",
                         "tandem_kernel_events_lost_total 1.0", "tandem_kernel_dump_repairs_total 1.0"):
                assert line in text, line
        finally:
            await node.stop()
    asyncio.run(go())


def _reload_removing_rs1(tmp_path, removed: str):
    from schema.core import dump_toml
    path = tmp_path / "k.toml"
    api = f"127.0.0.1:{free_port()}"
    path.write_text(dump_toml(doc(api=api, removed=removed)))
    path.chmod(0o600)

    async def go():
        kernel = FakeKernel()
        node = Node(parse(doc(api=api, removed=removed), "k.toml"), path=str(path),
                    edges=Edges(kernel=kernel, queue=Queue))
        await node.start()
        try:
            m0 = node.engine.marks.mark_for(RS[0], 8080, KLADDR)
            m1 = node.engine.marks.mark_for(RS[1], 8080, KLADDR)
            msgs = [event("new", 1, m0, ct.TCP_CT_ESTABLISHED),
                    event("new", 2, m1, ct.TCP_CT_ESTABLISHED)]
            kernel.conntrack = [m.ct for m in msgs]
            kernel.events[0].push(msgs)
            await settle()
            path.write_text(dump_toml(doc(reals=RS[1:], api=api, removed=removed)))
            summary = await node.reload()
            return summary, kernel
        finally:
            await node.stop()
    return asyncio.run(go())


def test_reload_expiring_a_removed_real_server_deletes_its_kernel_flows(tmp_path):
    """director.ctl expires a removed real server's connections with
    removed_server_conns = "expire": in kernel mode its conntrack entries are deleted."""
    summary, kernel = _reload_removing_rs1(tmp_path, "expire")
    deletes = [args[0] for op, args in kernel.calls if op == "delete_conntrack"]
    assert len(deletes) == 1 and [t.sport for t in deletes[0]] == [1]
    assert summary["kernel_flows_deleted"] == 1 and [c.orig.sport for c in kernel.conntrack] == [2]


def test_reload_keeping_a_removed_real_servers_flows_deletes_nothing(tmp_path):
    summary, kernel = _reload_removing_rs1(tmp_path, "keep")
    assert not [op for op, _ in kernel.calls if op == "delete_conntrack"]
    assert summary["kernel_flows_deleted"] == 0 and len(kernel.conntrack) == 2


def test_a_burst_scheduled_before_its_events_is_still_spread():
    """IPVS counts a connection on its real server when it binds it; here a flow handed to
    the kernel counts (inactive) at once, until its NEW event arrives, so lc spreads a
    burst of SYNs scheduled before any event came back instead of sending all to one."""
    async def go():
        kernel = FakeKernel()
        node = make_node(kernel)
        await node.start()
        try:
            marks = [node.engine.handle(tcp(CLIENT, KVIP, 43000 + i, 80, "S"), 0.0).mark
                     for i in range(6)]
            chosen = [node.engine.marks.binding(m).rs_addr for m in marks]
            assert sorted(chosen.count(a) for a in RS) == [3, 3], chosen
            d0, d1 = kdests(node)
            assert (d0.inactive, d1.inactive) == (3, 3)
            # the events arrive: the counts are the flows now, nothing counted twice
            kernel.events[0].push([event("new", 43000 + i, m, ct.TCP_CT_SYN_SENT)
                                   for i, m in enumerate(marks)])
            await settle()
            assert (d0.inactive, d1.inactive) == (3, 3)
            assert all(not q for q in node.kernel_path.pending.values())
        finally:
            await node.stop()
    asyncio.run(go())


def test_a_handed_over_flow_whose_event_never_comes_stops_counting():
    async def go():
        now = [100.0]
        kernel = FakeKernel()
        node = Node(parse(doc(), "k.toml"), edges=Edges(kernel=kernel, queue=Queue),
                    clock=lambda: now[0])
        await node.start()
        try:
            node.engine.handle(tcp(CLIENT, KVIP, 44000, 80, "S"), now[0])
            d0, _ = kdests(node)
            assert d0.inactive == 1
            now[0] += 3.0
            node.kernel_path.account()
            assert d0.inactive == 0
        finally:
            await node.stop()
    asyncio.run(go())


def test_a_queued_first_packet_is_verdicted_before_the_events_read_in_the_same_turn():
    """The event reader serves the queue before each slice of events
    (director.turn_slices): a SYN that waits while events are read is verdicted before
    them, not after the whole batch.  Real QueueAdapter on the fake kernel's queue."""
    from director.turn_slices import SLICE

    async def go():
        kernel = FakeKernel()
        node = Node(parse(doc(), "k.toml"), edges=Edges(kernel=kernel))
        await node.start()
        try:
            path = node.kernel_path
            m0 = node.engine.marks.mark_for(RS[0], 8080, KLADDR)
            ev, q = kernel.events[0], kernel.queues[0]
            for p in range(3 * SLICE):
                ev.push([event("new", 1000 + p, m0, ct.TCP_CT_SYN_SENT)])
            q.feed.send(tcp(CLIENT, KVIP, 40000, 80, "S"))
            looks: list[tuple[int, int]] = []   # (events applied, verdicts) at each look
            serve = path.slices.urgent

            def urgent() -> None:
                applied = path.flows.stats["events"]
                serve()
                looks.append((applied, len(q.verdicts)))
            path.slices.urgent = urgent
            path.on_readable()              # one turn of the event reader, as the loop calls it
            return looks, q, path.flows.stats["events"]
        finally:
            await node.stop()

    looks, q, applied = asyncio.run(go())
    # the SYN went first, with its mark, before any event of the turn
    assert len(q.verdicts) == 1 and q.verdicts[0][0] == "accept" and len(q.marks) == 1
    assert looks[0] == (0, 1) and applied >= SLICE
    # then a look before every slice (how many slices fit the turn's 2 ms is the box's)
    assert looks == [(SLICE * i, 1) for i in range(len(looks))]


def test_the_queue_readers_own_counters_are_in_status_and_the_metrics():
    """/status "queue" and /metrics carry the queue reader's own counters beside the
    kernel's: how often the queue woke the loop, and verdicts that failed inside the event
    reader's turn (stop 23 left them unexported).  Real QueueAdapter on the fake kernel's
    queue, one SYN through it."""
    import re
    from director.metrics import collectors, render

    async def go():
        kernel = FakeKernel()
        node = Node(parse(doc(), "k.toml"), edges=Edges(kernel=kernel))
        await node.start()
        try:
            kernel.queues[0].feed.send(tcp(CLIENT, KVIP, 40000, 80, "S"))
            for _ in range(500):
                if node.state.queue_stats()["wakeups"]:
                    break
                await asyncio.sleep(0.01)
            qs = node.state.queue_stats()
            text = render(*collectors(node.engine, node.state))[0].decode()
        finally:
            await node.stop()
        assert qs["wakeups"] >= 1 and qs["serve_errors"] == 0, qs
        q = node.cfg.queue
        woke = re.search(rf'tandem_nfqueue_wakeups_total{{queue="{q}"}} (\S+)', text)
        assert woke and float(woke.group(1)) >= 1, text
        assert f'tandem_nfqueue_serve_errors_total{{queue="{q}"}} 0.0' in text, text
    asyncio.run(go())
