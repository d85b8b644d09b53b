"""Kernel-mode services in a cluster (tandem/cluster.py with tandem/kernel_sync.py): two
real Nodes in one process, syncing over loopback with the real sync link, a fake kernel
each (no root) and a recording BIRD adapter.  A kernel-mode service's VIP and laddrs are
announced like an engine-mode one's; a flow a forwards through its kernel reaches b as a
conntrack injection with a's NAT (a's laddr:lport) and a mark of b's own for that binding,
so b's view counts it as a's; when b, now forwarding it after the router moved it, tells
of a state change, a's kernel entry for its own flow is updated, not replaced; and each
namespace relaxes TCP window tracking, since after a move each director sees one
direction only."""
from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace

from director.config import parse
from proto import ctnetlink as ct
from tandem.kernel_sync import CLUSTER_CT
from tandem.node import Edges, Node
from tests.fake_kernel import FakeInject, FakeKernel
from tests.unit.test_cluster_node import (LADDR, RS, VIP, CLIENT, FakeBird, config_doc,
                                          free_ports, until)
from tests.unit.test_kernel_node import Queue

KVIP = "198.19.41.101"
KLADDR = {"a": "198.19.43.11", "b": "198.19.43.12", "c": "198.19.43.13"}


def packed(a: str) -> bytes:
    return ipaddress.ip_address(a).packed


def kernel_config(name: str, names: list[str], sync_ports: dict[str, int]):
    doc = config_doc(name, names, sync_ports)
    doc["services"].append({"proto": "tcp", "vip": KVIP, "port": 80, "scheduler": "maglev",
                            "forwarding": "kernel", "laddrs": [KLADDR[name]],
                            "real_servers": [{"addr": a, "port": 8080} for a in RS]})
    doc["cluster"]["members"] = {n: {"engine": [LADDR[n]], "kernel": [KLADDR[n]]} for n in names}
    return replace(parse(doc, f"{name}.toml"), api_port=0)


def own(name: str) -> frozenset[str]:
    return frozenset({f"{VIP}/32", f"{KVIP}/32", f"{LADDR[name]}/32", f"{KLADDR[name]}/32"})


def event(node: Node, kind: str, laddr: str, state: int, pid: int = 0,
          cport: int = 40000) -> ct.Message:
    """A conntrack event of the flow CLIENT:cport -> KVIP:80, bound to RS[0] and `laddr`
    (lport 21000 + cport), carrying `node`'s mark for that binding."""
    mtype, flags = {"new": (ct.MSG_NEW, ct.NLM_F_CREATE), "update": (ct.MSG_NEW, 0)}[kind]
    mark = node.engine.marks.mark_for(RS[0], 8080, laddr)
    return ct.Message(mtype, flags, 0, 2, ct.Conntrack(
        orig=ct.Tuple(6, packed(CLIENT), packed(KVIP), cport, 80),
        reply=ct.Tuple(6, packed(RS[0]), packed(laddr), 8080, 21000 + cport), mark=mark,
        status=ct.IPS_CONFIRMED | ct.IPS_SEEN_REPLY | ct.IPS_ASSURED, tcp=ct.TcpInfo(state)), pid)


async def test_a_kernel_mode_flow_is_announced_synced_owned_and_moved_in_a_cluster():
    names = ["a", "b"]
    sync_ports = dict(zip(names, free_ports(2)))
    birds = {n: FakeBird() for n in names}
    kernels = {n: FakeKernel() for n in names}
    for k in kernels.values():
        k.ct_timeouts = dict.fromkeys(CLUSTER_CT, 0)        # the kernel's default
    nodes = {n: Node(kernel_config(n, names, sync_ports),
                     edges=Edges(kernel=kernels[n], bird=birds[n], queue=Queue)) for n in names}
    try:
        for n in names:
            await nodes[n].start()
        # the kernel-mode VIP and laddr are announced beside the engine-mode ones
        await until(lambda: all(birds[n].last == own(n) for n in names), "each announces its own")
        for n in names:
            assert all(kernels[n].ct_timeouts[k] == v for k, v in CLUSTER_CT.items())
        a, b = nodes["a"], nodes["b"]
        # the peers' engine-mode laddrs are queued here; the kernel-mode ones stay tracked
        assert a._queued(a.cfg) == sorted([VIP, LADDR["a"], LADDR["b"]])
        assert a.cfg.cluster.kernel_laddrs == {KLADDR["a"], KLADDR["b"]}

        # a forwards a new flow through its kernel: its event goes out on the sync link
        a.kernel_path.flows.apply(event(a, "new", KLADDR["a"], ct.TCP_CT_ESTABLISHED))
        inj_b: FakeInject = kernels["b"].inject
        await until(lambda: inj_b.sent, "b injects a's flow")
        [m] = inj_b.sent
        assert m.ct.nat_src == ct.NatRange(packed(KLADDR["a"]), 61000)
        assert m.ct.nat_dst == ct.NatRange(packed(RS[0]), 8080)
        bound = b.engine.marks.binding(m.ct.mark)      # a mark of b's own, for a's binding
        assert (bound.rs_addr, bound.rs_port, bound.laddr) == (RS[0], 8080, KLADDR["a"])
        # the injection's own event: b's view holds the flow, a's by its laddr, and b never
        # sends it back
        b.kernel_path.flows.apply(event(b, "new", KLADDR["a"], ct.TCP_CT_ESTABLISHED,
                                        pid=inj_b.portid))
        st_b = b.cluster.status()
        assert st_b["members"]["a"]["flows"] == 1 and st_b["flows_foreign"] == 1
        assert st_b["flows_owned"] == 0 and a.cluster.status()["flows_owned"] == 1
        assert b.kernel_sync.source.stats["own"] == 1

        # the router moved the flow to b, whose kernel sees the client's FIN: b tells its
        # peers; a's kernel holds the flow with that very binding, so it is updated (state,
        # timeout, BE_LIBERAL), not deleted and created again
        inj_a: FakeInject = kernels["a"].inject
        inj_a.table = {ct.Tuple(6, packed(CLIENT), packed(KVIP), 40000, 80)}
        b.kernel_path.flows.apply(event(b, "update", KLADDR["a"], ct.TCP_CT_FIN_WAIT))
        await until(lambda: len(inj_a.sent) == 2, "a hears b's state change")
        create, update = inj_a.sent
        assert create.flags & ct.NLM_F_CREATE and not update.flags & ct.NLM_F_CREATE
        assert update.ct.nat_dst is None and update.ct.tcp.state == ct.TCP_CT_FIN_WAIT
        assert a.kernel_sync.injector.stats["kept"] == 1
        assert a.kernel_sync.injector.stats["replaced"] == 0

        # a flow of b's own, held on a as injected: refreshed by b, never by a ...
        orig = ct.Tuple(6, packed(CLIENT), packed(KVIP), 40001, 80)
        a.kernel_path.flows.apply(event(a, "new", KLADDR["b"], ct.TCP_CT_ESTABLISHED,
                                        pid=inj_a.portid, cport=40001))
        assert a.kernel_sync.source.flows[orig].due is None
        # ... until b stops and a adopts b's laddrs: a refreshes b's flows from then on
        await b.stop()
        await until(lambda: KLADDR["b"] in a.cluster.status()["adopted"], "a adopts b's laddrs")
        assert a.kernel_sync.source.flows[orig].due is not None
    finally:
        for node in nodes.values():
            await node.stop()
    for n in names:        # the namespace's switch is put back at stop
        assert all(kernels[n].ct_timeouts[k] == 0 for k in CLUSTER_CT)


def test_a_director_with_kernel_mode_services_joins_through_a_reload():
    """A join changes `[cluster] members` and with it every member's kernel-mode laddrs: the
    membership is what a reload applies (the join drill's reload was refused once: the
    kernel-mode laddrs were compared as if another [cluster] key)."""
    from director.config import check_reloadable
    ports = dict(zip("abc", free_ports(3)))
    old = kernel_config("a", ["a", "b"], ports)
    new = kernel_config("a", ["a", "b", "c"], ports)
    assert new.cluster.kernel_laddrs - old.cluster.kernel_laddrs == {"198.19.43.13"}
    check_reloadable(old, new)
    check_reloadable(new, old)
