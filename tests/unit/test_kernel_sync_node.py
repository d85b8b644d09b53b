"""The node's kernel-mode sync (tandem.kernel_sync) with the real sync link and the fake
kernel: a master's conntrack events become entries on the link, a backup sends none, the
peer's entries of a kernel-mode service become conntrack injections (an engine-mode
service's still reach the engine), a bulk carries the kernel flows."""
from __future__ import annotations

import asyncio
import ipaddress

from director.config import parse
from proto import consts as C, ctnetlink as ct, sync as S
from proto.sync import SyncEntry
from tandem.kernel_mode import make_bindings
from tandem.node import Edges, Node
from tests.fake_kernel import FakeInject, FakeKernel
from tests.unit.test_kernel_node import CLIENT, ELADDR, EVIP, KLADDR, KVIP, RS, Queue, doc

SYNC_DOC = {
    "interfaces": {"front": "front0", "back": "back0", "garp_count": 3},
    "vrrp": {"vrid": 51, "priority": 150, "primary_address": "198.18.0.11"},
    "sync": {"key": "node-test-sync-key-0123456789", "mode": "unicast", "bind": "127.0.0.1",
             "port": 0, "peers": ["127.0.0.1:9"]},
}


def packed(a: str) -> bytes:
    return ipaddress.ip_address(a).packed


def make_node() -> Node:
    node = Node(parse({**doc(), **SYNC_DOC}, "k.toml"), edges=Edges(kernel=FakeKernel(), queue=Queue))
    make_bindings(node.cfg, node.engine.marks)      # as the node's start does
    return node


def kernel_event(node: Node, kind: str, cport: int, state: int | None, pid: int = 0) -> ct.Message:
    mtype, flags = {"new": (ct.MSG_NEW, ct.NLM_F_CREATE), "update": (ct.MSG_NEW, 0),
                    "destroy": (ct.MSG_DELETE, 0)}[kind]
    mark = node.engine.marks.mark_for(RS[0], 8080, KLADDR)
    orig = ct.Tuple(6, packed(CLIENT), packed(KVIP), cport, 80)
    reply = ct.Tuple(6, packed(RS[0]), packed(KLADDR), 8080, 61000 + cport)
    return ct.Message(mtype, flags, 0, 2, ct.Conntrack(
        orig=orig, reply=reply, mark=mark, status=ct.IPS_CONFIRMED | ct.IPS_SEEN_REPLY,
        tcp=ct.TcpInfo(state) if state is not None else None), pid)


def sent_entries(node: Node) -> list[SyncEntry]:
    tx = node.sync.sender
    return [e for raw in tx.flush(0.0)
            for e in S.decode(raw, tx.key, tx.cfg.sync_id).entries]


def test_a_master_sends_its_kernel_flows_and_a_backup_does_not():
    async def go():
        node = make_node()
        ks = node.kernel_sync
        assert ks is not None
        flows = node.kernel_path.flows
        ks.set_role("backup")
        flows.apply(kernel_event(node, "new", 1, ct.TCP_CT_SYN_SENT))
        assert sent_entries(node) == []
        ks.set_role("master")
        flows.apply(kernel_event(node, "new", 2, ct.TCP_CT_SYN_SENT))
        flows.apply(kernel_event(node, "update", 2, ct.TCP_CT_ESTABLISHED))
        # an event our own injection caused is not echoed, master or not
        flows.apply(kernel_event(node, "new", 3, ct.TCP_CT_ESTABLISHED, pid=FakeInject.portid))
        got = sent_entries(node)
        assert [(e.cport, e.state) for e in got] == [(2, C.SYN_RECV), (2, C.ESTABLISHED)]
        e = got[-1]
        assert (e.vaddr, e.daddr, e.laddr, e.lport) == (packed(KVIP), packed(RS[0]),
                                                        packed(KLADDR), 61002)
        # a bulk this node sends carries the kernel flows it holds
        tx = node.sync.sender
        bulk = [tx.to_entry(obj, 1.0) for obj in tx.snapshot()]
        assert sorted(b.cport for b in bulk if b is not None) == [1, 2, 3]
        # lost events: the dump shows them gone: their ends go out (the bulk sent all three)
        flows.resync([])
        ends = sent_entries(node)
        assert sorted((e.cport, e.timeout) for e in ends) == [(1, 0), (2, 0), (3, 0)]
        c = ks.counters()
        assert (c["sync_urgent"], c["sync_ends"], c["inject_created"]) == (2, 3, 0)
    asyncio.run(go())


def test_the_peers_kernel_mode_entries_are_injected_and_engine_mode_ones_applied():
    async def go():
        node = make_node()
        inj: FakeInject = node.edges.kernel.inject
        rx = node.sync.receiver
        kentry = SyncEntry(6, C.ESTABLISHED, C.ASSURED, packed(CLIENT), 40000, packed(KVIP), 80,
                           packed(KLADDR), 61000, packed(RS[1]), 8080, 900.0, False, 3)
        eentry = SyncEntry(6, C.ESTABLISHED, C.ASSURED, packed(CLIENT), 40001, packed(EVIP), 80,
                           packed(ELADDR), 5000, packed(RS[1]), 8080, 900.0, False, 3)
        assert rx.apply(kentry, 1.0) == "injected"
        assert rx.apply_bulk(eentry, 1.0) == "created"
        await asyncio.sleep(0)
        [m] = inj.sent
        assert m.msg_type == ct.MSG_NEW and m.ct.orig == ct.Tuple(6, packed(CLIENT), packed(KVIP),
                                                                  40000, 80)
        assert m.ct.nat_dst == ct.NatRange(packed(RS[1]), 8080)
        assert m.ct.nat_src == ct.NatRange(packed(KLADDR), 61000)
        binding = node.engine.marks.binding(m.ct.mark)
        assert (binding.rs_addr, binding.rs_port, binding.laddr) == (RS[1], 8080, KLADDR)
        assert node.engine.table.count == 1          # only the engine-mode connection
        kentry.timeout = 0.0                         # the master's flow ended
        rx.apply(kentry, 2.0)
        await asyncio.sleep(0)
        assert inj.sent[-1].msg_type == ct.MSG_DELETE
        c = node.kernel_sync.counters()
        assert (c["inject_created"], c["inject_deleted"], c["inject_backlog"]) == (1, 1, 0)
    asyncio.run(go())


def test_a_bulk_from_the_peer_replaces_a_flow_left_here_by_an_older_connection():
    """The CI failure of test_failover's stop-kernel failback (437 kept, 63 reset): the
    restarted node's conntrack still held the stop drill's entry for client port 40000
    (TIME_WAIT, real server RS[0]), adopted into its view at start; the client had reused
    that port for a new connection through the peer, which the peer's kernel took as new
    (a SYN on a TIME_WAIT entry) and sent to RS[1].  The peer's bulk entry must replace the
    old entry (delete, create with the peer's NAT), not keep its NAT: the node forwards
    the connection once it preempts."""
    async def go():
        node = make_node()
        inj: FakeInject = node.edges.kernel.inject
        old = ct.Conntrack(orig=ct.Tuple(6, packed(CLIENT), packed(KVIP), 40000, 80),
                           reply=ct.Tuple(6, packed(RS[0]), packed(KLADDR), 8080, 61000),
                           mark=node.engine.marks.mark_for(RS[0], 8080, KLADDR),
                           status=ct.IPS_CONFIRMED | ct.IPS_SEEN_REPLY | ct.IPS_ASSURED,
                           tcp=ct.TcpInfo(ct.TCP_CT_TIME_WAIT))
        node.kernel_path.flows.adopt([old])     # what the start-up dump showed
        inj.table = {old.orig}
        new = SyncEntry(6, C.ESTABLISHED, C.ASSURED, packed(CLIENT), 40000, packed(KVIP), 80,
                        packed(KLADDR), 61000, packed(RS[1]), 8080, 900.0, False, 3)
        assert node.sync.receiver.apply_bulk(new, 1.0) == "injected"
        for _ in range(3):
            await asyncio.sleep(0)
        assert [m.msg_type for m in inj.sent] == [ct.MSG_NEW, ct.MSG_DELETE, ct.MSG_NEW]
        assert inj.sent[-1].ct.nat_dst == ct.NatRange(packed(RS[1]), 8080)
        assert node.kernel_sync.counters()["inject_stale"] == 1
    asyncio.run(go())


def test_injected_entries_follow_the_timeouts_policy_through_the_namespaces_defaults():
    """Issue 13: an entry injected through ctnetlink gets no `ct timeout` policy (no
    attribute attaches one, and nftables attaches one only to an unconfirmed entry:
    measured, docs/kernel-fast-path.md), so after a takeover the kernel timed a flow out by
    its own defaults, 5 days when ESTABLISHED.  The node now sets the namespace's defaults
    to the [timeouts] policy's values at start (IPVS's 900 s ESTABLISHED, the tracker's
    SYN_RECV from tcp_synack as the policy maps it) and puts the old ones back at stop."""
    async def go():
        node = make_node()
        kernel: FakeKernel = node.edges.kernel
        kernel.ct_timeouts = {"nf_conntrack_tcp_timeout_established": 432000}
        ks = node.kernel_sync
        ks.start("backup")
        t = node.cfg.timeouts
        got = kernel.ct_timeouts
        assert got["nf_conntrack_tcp_timeout_established"] == 900 == t["tcp_established"]
        assert got["nf_conntrack_tcp_timeout_syn_recv"] == max(1, round(t["tcp_synack"]))
        assert got["nf_conntrack_tcp_timeout_time_wait"] == round(t["tcp_time_wait"])
        assert got["nf_conntrack_udp_timeout"] == got["nf_conntrack_udp_timeout_stream"] == \
            round(t["udp"])
        assert len(got) == 10
        # a reload that changes [timeouts] reaches them too; the old values stay saved
        doc2 = {**doc(), **SYNC_DOC, "timeouts": {"tcp_established": 600}}
        node.engine.reconfigure(parse(doc2, "k.toml"), 1.0)
        ks.reconfigured()
        assert kernel.ct_timeouts["nf_conntrack_tcp_timeout_established"] == 600
        calls = len(kernel.calls)
        ks.reconfigured()                           # nothing changed: nothing written
        assert len(kernel.calls) == calls
        await ks.stop()
        assert kernel.ct_timeouts["nf_conntrack_tcp_timeout_established"] == 432000
    asyncio.run(go())
