"""What an operator sees of kernel mode, through the real node against the fake kernel:
the flows a previous run left in conntrack adopted at start (counts, marks), a [timeouts]
change reaching new kernel flows on reload, the table's drop counters in /status and
/metrics, kernel flows in GET /conns, kernel sync's counters in /metrics."""
from __future__ import annotations

import asyncio
import ipaddress
import json

from aiohttp.test_utils import TestClient, TestServer

from director.api import make_app
from director.config import parse
from director.kernel_rules import MARK_BASE
from director.metrics import collectors, render
from proto import ctnetlink as ct
from schema.core import dump_toml
from tandem.node import Edges, Node
from tests.fake_kernel import FakeKernel
from tests.unit.test_kernel_node import CLIENT, ELADDR, EVIP, KLADDR, KVIP, RS, Queue, doc, free_port, kdests, make_node, settle


def packed(a: str) -> bytes:
    return ipaddress.ip_address(a).packed


def entry(cport: int, rs: str, mark: int, state: int | None = ct.TCP_CT_ESTABLISHED,
          timeout: int = 800) -> ct.Conntrack:
    """A kernel-forwarded flow as a dump shows it: client -> KVIP:80, NAT to rs:8080 from
    KLADDR:(61000 + cport)."""
    return ct.Conntrack(orig=ct.Tuple(6, packed(CLIENT), packed(KVIP), cport, 80),
                        reply=ct.Tuple(6, packed(rs), packed(KLADDR), 8080, 61000 + cport),
                        status=ct.IPS_CONFIRMED | ct.IPS_SEEN_REPLY | ct.IPS_ASSURED,
                        timeout=timeout, mark=mark, tcp=ct.TcpInfo(state) if state else None)


def test_a_restarted_node_adopts_the_flows_its_predecessor_left():
    """The kernel forwards a previous run's flows on: a start dumps conntrack, gives each
    mark back to the binding its entry's NAT shows (here in another order than this run
    would hand them out), and counts the flows on their real servers."""
    async def go():
        kernel = FakeKernel()
        old_rs1, old_rs0 = MARK_BASE | 1, MARK_BASE | 7
        kernel.conntrack = [entry(1, RS[1], old_rs1), entry(2, RS[1], old_rs1, ct.TCP_CT_TIME_WAIT),
                            entry(3, RS[0], old_rs0),
                            entry(4, RS[0], old_rs1),        # a mark that names rs1 already
                            entry(5, RS[0], 0x1234)]         # not ours
        node = make_node(kernel)
        await node.start()
        try:
            ops = [op for op, _ in kernel.calls]
            assert ops.index("open_ct_events") < ops.index("dump_conntrack") \
                < ops.index("install_kernel_rules")
            marks = node.engine.marks
            assert (marks.binding(old_rs1).rs_addr, marks.binding(old_rs0).rs_addr) == (RS[1], RS[0])
            assert marks.mark_for(RS[0], 8080, KLADDR) == old_rs0
            loaded = {b.mark for b in kernel.kernel_rules[1]}
            assert {old_rs1, old_rs0} <= loaded
            st = node.state.kernel_stats()
            assert (st["flows"], st["active"], st["inactive"], st["adopted"],
                    st["adopt_conflicts"]) == (3, 2, 1, 3, 1)
            assert (st["resyncs"], st["repaired"]) == (0, 0)
            d0, d1 = kdests(node)
            assert ((d0.active, d0.inactive), (d1.active, d1.inactive)) == ((1, 0), (1, 1))
        finally:
            await node.stop()
    asyncio.run(go())


def test_a_restarted_node_never_takes_its_predecessors_kernel_rules_out_of_the_table():
    """A killed node leaves its table loaded, and the kernel forwards its flows on: their
    NAT is in conntrack, but the kernel applies it only while a nat chain is loaded (the
    nat hooks come and go with it).  Were the table ever without the kernel-mode part
    during the restart, every packet of those flows in that moment would reach the
    director's own stack untranslated, still addressed to the VIP, and it answers RST (the
    lab measured it: held connections reset).  So the node's start tells its first
    engine-mode load that the kernel-mode load follows (which replaces the table whole,
    both modes' parts in one transaction), and nothing leaves the kernel-mode part out."""
    async def go():
        kernel = FakeKernel()
        mark = MARK_BASE | 1
        kernel.conntrack = [entry(1, RS[0], mark)]
        kernel.kernel_rules = ((), (), 0, None)             # what the killed node loaded
        node = make_node(kernel)
        await node.start()
        try:
            assert kernel.kernel_part_history and all(kernel.kernel_part_history), kernel.calls
            assert kernel.rules == ((EVIP, ELADDR), 0)      # the engine-mode part is in too
            assert mark in {b.mark for b in kernel.kernel_rules[1]}
            assert node.state.kernel_stats()["adopted"] == 1
        finally:
            await node.stop()
        assert kernel.kernel_rules is None and kernel.rules is None
    asyncio.run(go())


def test_a_restarted_node_keeps_its_predecessors_timeout_objects_for_the_flows_it_adopts():
    """The predecessor's `ct timeout` objects give the flows it left IPVS's timeouts; the
    restarted node's fresh load keeps them (deleting one would put its flows on
    conntrack's 5 days) and brings its own policy as the next generation."""
    async def go():
        kernel = FakeKernel()
        kernel.conntrack = [entry(1, RS[0], MARK_BASE | 1)]
        kernel.kernel_rules = ((), (), 0, None)
        left = {"tcp4_2", "tcp6_2", "udp4_2", "udp6_2"}
        kernel.timeout_objects = set(left)
        node = make_node(kernel)
        await node.start()
        try:
            assert node.kernel_path.timeout_generation == kernel.timeout_generation == 3
            assert left < kernel.timeout_objects and "tcp4_3" in kernel.timeout_objects
        finally:
            await node.stop()
    asyncio.run(go())


def test_a_timeouts_change_on_reload_reaches_new_kernel_flows(tmp_path):
    path = tmp_path / "k.toml"
    api = f"127.0.0.1:{free_port()}"

    def write(**timeouts):
        d = doc(api=api)
        if timeouts:
            d["timeouts"] = timeouts
        path.write_text(dump_toml(d))
        path.chmod(0o600)
        return d

    async def go():
        kernel = FakeKernel()
        node = Node(parse(write(), "k.toml"), path=str(path), edges=Edges(kernel=kernel, queue=Queue))
        await node.start()
        try:
            assert kernel.kernel_rules[3]["tcp_established"] == 900
            write(tcp_established=60)
            await node.reload()
            assert kernel.kernel_rules[3]["tcp_established"] == 60
            assert (kernel.timeout_generation, node.kernel_path.timeout_generation) == (2, 2)
            write(tcp_established=60)              # unchanged: no new generation
            await node.reload()
            assert kernel.timeout_generation == 2
            fresh = [a[-1] for op, a in kernel.calls if op == "install_kernel_rules"]
            assert fresh == [True, False, False]
        finally:
            await node.stop()
    asyncio.run(go())


def test_drop_counters_reach_status_and_metrics():
    async def go():
        kernel = FakeKernel()
        node = make_node(kernel)
        await node.start()
        try:
            assert node.state.kernel_stats()["drops"] == {"invalid": 0, "untranslated": 0}
            kernel.drops = {"invalid": 120, "untranslated": 3}
            await settle()          # the read above started one in a worker thread
            assert node.state.kernel_stats()["drops"] == {"invalid": 120, "untranslated": 3}
            text = render(*collectors(node.engine, node.state))[0].decode()
            assert 'tandem_kernel_drops_total{reason="invalid"} 120.0' in text
            assert 'tandem_kernel_drops_total{reason="untranslated"} 3.0' in text
            kernel.fail("kernel_drop_counters", OSError(2, "no table"))
            await node.kernel_path.drop_counters.refresh()
            assert node.state.kernel_stats()["counter_read_failures"] == 1
            assert node.state.kernel_stats()["drops"]["invalid"] == 120     # the last reading
        finally:
            await node.stop()
    asyncio.run(go())


def test_conns_lists_kernel_flows_after_the_engines_paged_and_filtered():
    async def go():
        kernel = FakeKernel()
        node = make_node(kernel)
        await node.start()
        try:
            m0 = node.engine.marks.mark_for(RS[0], 8080, KLADDR)
            m1 = node.engine.marks.mark_for(RS[1], 8080, KLADDR)
            entries = [entry(1, RS[0], m0), entry(2, RS[1], m1, ct.TCP_CT_SYN_SENT, 50),
                       entry(3, RS[1], m1)]
            kernel.conntrack = list(entries)
            kernel.events[0].push([ct.Message(ct.MSG_NEW, ct.NLM_F_CREATE, 0, 2, c) for c in entries])
            await settle()
            kernel.conntrack = entries[1:]          # flow 1 ended; its event not yet read
            node.state.api_token = "test-token-0123456789"        # clients shown with it
            app = make_app(node.engine, node.state)
            async with TestClient(TestServer(app)) as client:
                async def get(q):
                    r = await client.get(f"/conns?{q}",
                                         headers={"Authorization": f"Bearer {node.state.api_token}"})
                    assert r.status == 200
                    return json.loads(await r.text())
                page = await get("limit=10")
                assert page["total"] == 3
                rows = page["conns"]
                assert [r["client"] for r in rows] == [f"{CLIENT}:2", f"{CLIENT}:3"]
                r2 = rows[0]
                assert (r2["forwarding"], r2["vip"], r2["real"], r2["local"], r2["state"],
                        r2["expires_in"], r2["created"], r2["mark"]) == (
                    "kernel", f"{KVIP}:80", f"{RS[1]}:8080", f"{KLADDR}:61002", "SYN_RECV", 50.0,
                    None, f"0x{m1:08x}")
                assert "inactive" in r2["flags"] and "inactive" not in rows[1]["flags"]
                real = await get(f"real={RS[0]}:8080")
                assert real["total"] == 1 and real["conns"] == []      # gone from the kernel
                second = await get("limit=1&offset=2")
                assert [r["client"] for r in second["conns"]] == [f"{CLIENT}:3"]
                counted = await get("limit=0")
                assert (counted["total"], counted["conns"]) == (3, [])
                other = await get("service=tcp/198.18.0.100:80")
                assert other["total"] == 0
        finally:
            await node.stop()
    asyncio.run(go())


def test_kernel_sync_counters_are_metrics_as_the_node_produces_them():
    """The sync of kernel flows (entries made from events, injections of the peer's) in
    /metrics, not only /status: the real node's kernel path and kernel sync, fed a master's
    events and a peer's entries."""
    from proto import consts as C
    from proto.sync import SyncEntry
    from tests.unit.test_kernel_sync_node import kernel_event, make_node as sync_node
    from tests.unit.test_kernel_sync_node import packed as pk

    async def go():
        node = sync_node()
        await node.kernel_path.start(node.cfg)
        try:
            ks, flows = node.kernel_sync, node.kernel_path.flows
            ks.set_role("master")
            flows.apply(kernel_event(node, "new", 2, ct.TCP_CT_SYN_SENT))
            flows.apply(kernel_event(node, "update", 2, ct.TCP_CT_ESTABLISHED))
            flows.apply(kernel_event(node, "destroy", 2, None))
            peer = SyncEntry(6, C.ESTABLISHED, C.ASSURED, pk(CLIENT), 40000, pk(KVIP), 80,
                             pk(KLADDR), 61000, pk(RS[1]), 8080, 900.0, False, 3)
            node.sync.receiver.apply(peer, 1.0)
            await asyncio.sleep(0)
            c = ks.counters()
            assert (c["sync_entries"], c["sync_urgent"], c["sync_ends"], c["inject_created"]) == (3, 2, 1, 1)
            text = render(*collectors(node.engine, node.state))[0].decode()
            for key, name in (("sync_entries", "kernel_sync_entries_total"),
                              ("sync_urgent", "kernel_sync_urgent_total"),
                              ("sync_refreshes", "kernel_sync_refreshes_total"),
                              ("sync_ends", "kernel_sync_ends_total"),
                              ("sync_pruned", "kernel_sync_pruned_total"),
                              ("inject_created", "kernel_inject_created_total"),
                              ("inject_updated", "kernel_inject_updated_total"),
                              ("inject_deleted", "kernel_inject_deleted_total"),
                              ("inject_stale", "kernel_inject_stale_total"),
                              ("inject_failed", "kernel_inject_failed_total"),
                              ("inject_backlog", "kernel_inject_backlog")):
                assert f"tandem_{name} {float(c[key])}" in text, (name, c)
        finally:
            await node.kernel_path.stop()
    asyncio.run(go())
