"""tandem.node.Node: start / stop and the event pump, with every kernel edge replaced by a fake
(no root): the order of the edges' operations, the election gated on the peer's bulk, the
planned release, tracked links, and a reload that keeps iptables off the event loop."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from director.config import parse
from ha.vrrp import Reannounce, SendAdvert, State, StateChange, VrrpInstance
from proto.vrrp import Advert
from tandem.node import Edges, Node
from tests.fake_kernel import FakeKernel
from tests.helpers import tcp

VIP, LADDR = "198.18.0.100", "198.18.2.100"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


API = f"127.0.0.1:{free_port()}"
DOC = {
    # state_dir "": overrides in memory only, never the host's /var/lib/tandem (a file left
    # there by another run would be loaded by every node of this suite)
    "node": {"name": "a", "api": API, "tick": 0.01, "state_dir": ""},
    "services": [{"proto": "tcp", "vip": VIP, "port": 80, "laddrs": [LADDR],
                  "real_servers": [{"addr": "198.18.2.21", "port": 8080}]}],
    "interfaces": {"front": "front0", "back": "back0", "garp_count": 3},
    "vrrp": {"vrid": 51, "priority": 150, "primary_address": "198.18.0.11",
             "startup_sync_wait": 5.0, "preempt_yield": 0.05},
    "sync": {"key": "node-test-sync-key-0123456789", "mode": "unicast", "bind": "127.0.0.1", "port": 0,
             "peers": ["127.0.0.1:9"]},
}


class Fakes:
    """Every edge, recording into one list of operations in the order they happen."""

    def __init__(self) -> None:
        self.ops: list[str] = []
        self.threads: dict[str, str] = {}
        self.down: list[str] = []
        self.bulk_done = False
        self.vrrp: FakeVrrp | None = None
        self.pending_sync = 0
        self.announced: list[tuple] = []           # STATE messages sent to the peer
        self.peer_state_cb = None

    def edges(self) -> Edges:
        fakes = self

        class Queue:
            def __init__(self, handle, num, clock, bind) -> None:
                pass

            def start(self, loop) -> None:
                fakes.ops.append("queue read")

            def stop(self) -> None:
                fakes.ops.append("queue stop")

        class Takeover:
            def __init__(self, cfg, kernel) -> None:
                self.cfg = cfg

            async def acquire(self) -> None:
                fakes.ops.append("add addresses")

            async def release(self) -> None:
                fakes.ops.append("remove addresses")

            async def announce(self) -> None:
                fakes.ops.append("garp")

        class Sync:
            def __init__(self, cfg, engine) -> None:
                pass

            async def start(self) -> None:
                fakes.ops.append("sync start")

            @property
            def bulk_done(self) -> bool:
                return fakes.bulk_done

            def flush(self) -> int:
                fakes.ops.append(f"sync flush {fakes.pending_sync}")
                n, fakes.pending_sync = fakes.pending_sync, 0
                return n

            def close(self) -> None:
                fakes.ops.append("sync close")

            def describe(self) -> dict:
                return {}

            def last_heard(self) -> None:
                return None             # no peer ever heard

            live_within = 0.6

            def announce(self, role, priority, address, resigned) -> None:
                fakes.announced.append((role, priority, address, resigned))

            def on_peer_state(self, callback) -> None:
                fakes.peer_state_cb = callback

            def peer_state(self):
                return None

            def peer_view(self) -> dict:
                return {"node": None, "said": None, "sync": {
                    "state": "none", "last_heard_s": None, "missing": 0,
                    "lag_ms": {"p50": None, "p99": None, "max": None}}}

        class Kernel(FakeKernel):
            def install_rules(self, addrs, queue, kernel_follows=False) -> None:
                fakes.threads["install"] = threading.current_thread().name
                fakes.ops.append(f"rules {' '.join(addrs)}")
                super().install_rules(addrs, queue, kernel_follows)

            def remove_rules(self) -> None:
                fakes.threads["remove"] = threading.current_thread().name
                fakes.ops.append("rules removed")
                super().remove_rules()

            def links_down(self, ifnames) -> list:
                self.links = {n: n not in fakes.down for n in ifnames}
                return super().links_down(ifnames)

        def vrrp(cfg, ifname, **kw) -> FakeVrrp:
            fakes.vrrp = FakeVrrp(cfg, ifname, fakes.ops, **kw)
            return fakes.vrrp

        return Edges(kernel=Kernel(), queue=Queue, queue_stats=lambda q: {}, takeover=Takeover,
                     vrrp=vrrp, sync=Sync)


class FakeVrrp:
    """The VRRP runner without its socket: a real VrrpInstance whose actions are delivered as
    VrrpRunner delivers them; the test fires its timer and hands it adverts."""

    clock = staticmethod(time.monotonic)

    def __init__(self, cfg, ifname, ops, *, on_change, on_reannounce, socket_factory) -> None:
        self.cfg, self.ifname = cfg, ifname
        self.instance = VrrpInstance(cfg)
        self.ops, self.on_change, self.on_reannounce = ops, on_change, on_reannounce
        self.sent: list[int] = []

    def _apply(self, actions) -> None:
        for a in actions:
            if isinstance(a, SendAdvert):
                self.sent.append(a.priority)
            elif isinstance(a, StateChange):
                self.on_change(a)
            elif isinstance(a, Reannounce):
                self.on_reannounce(a.reason)

    async def start(self) -> None:
        self.ops.append("election start")
        self._apply(self.instance.start(time.monotonic()))

    async def stop(self, graceful: bool = True) -> None:
        self.ops.append("election stop")
        self._apply(self.instance.shutdown(time.monotonic()))

    def fire(self) -> None:
        self._apply(self.instance.on_timer(self.instance.next_deadline()))

    def advert(self, priority: int, src: str = "198.18.0.12") -> None:
        self._apply(self.instance.on_advert(Advert(51, priority, 10, (VIP,)), src, 255,
                                            time.monotonic()))

    def set_fault(self, on: bool) -> None:
        self.ops.append(f"fault {on}")
        self._apply(self.instance.set_fault(on, time.monotonic()))

    def resign(self) -> None:
        self._apply(self.instance.resign(time.monotonic()))

    def resume(self) -> None:
        self._apply(self.instance.resume(time.monotonic()))


async def until(pred, timeout: float = 5.0) -> bool:
    """Wait for pred (a bound on a hang, not a timing assertion)."""
    end = time.monotonic() + timeout
    while not pred() and time.monotonic() < end:
        await asyncio.sleep(0.005)
    return pred()


def node(fakes: Fakes, doc=DOC, **kw) -> Node:
    return Node(parse(doc, "a.toml"), edges=fakes.edges(), **kw)


async def test_start_then_stop_in_the_documented_order():
    f = Fakes()
    n = node(f)
    await n.start()
    try:
        assert f.ops == ["remove addresses", "queue read", f"rules {VIP} {LADDR}", "sync start"]
        assert n.state.status().role == "init" and f.vrrp is None
        f.bulk_done = True                         # the peer's bulk resync arrived
        assert await until(lambda: f.vrrp is not None and f.vrrp.instance.state is State.BACKUP)
        assert await until(lambda: n.state.status().role == "backup")
        f.vrrp.fire()                              # master down timer
        assert await until(lambda: "garp" in f.ops)
        assert n.state.status().role == "master" and n.state.status().priority == 150
        assert f.ops[4:] == ["election start", "add addresses", "garp"]
        assert [c["to"] for c in n.state.status().role_changes] == ["backup", "master"]
    finally:
        f.pending_sync = 2
        await n.stop()
    # the addresses go before the election's priority 0 (docs/architecture.md, "Stopping")
    assert f.ops[7:] == ["sync flush 2", "remove addresses", "election stop", "remove addresses",
                         "sync close", "rules removed", "queue stop"]
    assert f.vrrp.sent[-1] == 0                    # the peer takes over after its skew
    assert n.state.status().role == "init"
    assert f.threads["install"] != threading.main_thread().name
    assert f.threads["remove"] != threading.main_thread().name


async def test_no_bulk_the_election_starts_after_startup_sync_wait():
    f = Fakes()
    doc = {**DOC, "vrrp": {**DOC["vrrp"], "startup_sync_wait": 0.05}}
    n = node(f, doc)
    await n.start()
    try:
        assert await until(lambda: f.vrrp is not None)
        assert f.vrrp.instance.state is State.BACKUP
    finally:
        await n.stop()


async def test_being_preempted_flushes_sync_before_the_addresses_go():
    f = Fakes()
    n = node(f)
    f.bulk_done = True
    await n.start()
    try:
        assert await until(lambda: f.vrrp is not None)
        f.vrrp.fire()
        assert await until(lambda: "garp" in f.ops)
        f.pending_sync = 3
        f.vrrp.advert(200)                         # a higher-priority master
        assert await until(lambda: n.state.status().role == "backup")
        i = f.ops.index("sync flush 3")
        assert f.ops[i + 1] == "remove addresses"
    finally:
        await n.stop()


async def test_a_tracked_link_down_is_a_fault_and_up_again_clears_it():
    f = Fakes()
    n = node(f)
    f.bulk_done = True
    await n.start()
    try:
        assert await until(lambda: f.vrrp is not None)
        f.vrrp.fire()
        assert await until(lambda: n.state.status().role == "master")
        f.down = ["back0"]
        assert await until(lambda: n.state.status().role == "fault")
        assert f.ops[-3:] == ["fault True", "sync flush 0", "remove addresses"]
        f.down = []
        assert await until(lambda: n.state.status().role == "backup")
        assert f.ops.count("fault True") == 1 and f.ops[-1] == "fault False"
    finally:
        await n.stop()


async def test_reload_runs_iptables_in_a_worker_thread(tmp_path):
    """node.reload used to run iptables (blocking subprocesses) on the event loop that must
    send VRRP adverts on time; now it runs them in a worker thread."""
    import copy
    from schema.core import dump_toml
    f = Fakes()
    path = tmp_path / "a.toml"
    doc = copy.deepcopy(DOC)
    doc["services"][0]["vip"] = "198.18.0.101"
    path.write_text(dump_toml(doc))
    n = node(f, path=str(path))
    await n.start()
    try:
        f.threads.clear()
        summary = await n.reload()
        assert summary["changed"] is True
        assert f.ops[-1] == f"rules 198.18.0.101 {LADDR}"
        assert f.threads["install"] != threading.main_thread().name
    finally:
        await n.stop()


async def test_fixed_role_without_election():
    f = Fakes()
    doc = {k: v for k, v in DOC.items() if k not in ("vrrp", "sync")}
    doc["node"] = {**doc["node"], "role": "master"}
    n = node(f, doc)
    await n.start()
    try:
        assert await until(lambda: "garp" in f.ops)
        assert f.ops == ["queue read", f"rules {VIP} {LADDR}", "add addresses", "garp"]
        assert n.state.status().role == "master" and f.vrrp is None
    finally:
        await n.stop()
    assert f.ops[-3:] == ["remove addresses", "rules removed", "queue stop"]


async def test_stop_before_start_and_twice_is_harmless():
    f = Fakes()
    n = node(f)
    await n.stop()
    await n.stop()
    assert f.ops == []
    with pytest.raises(RuntimeError):
        await n.start()




async def test_a_slow_link_check_neither_blocks_nor_spins_the_pump():
    """A tracked-link check is a netlink round trip in a worker thread; on a loaded machine it
    takes a while.  The pump must go on taking state changes meanwhile (never await it), and
    must not spin waiting for it either."""
    f = Fakes()
    f.bulk_done = True
    n = node(f)
    release = threading.Event()
    kernel = n.edges.kernel
    slow = kernel.links_down

    def stuck_links_down(names):
        release.wait(5.0)
        return slow(names)

    kernel.links_down = stuck_links_down
    turns = [0]
    real_turn = n._turn

    async def counted(*a):
        turns[0] += 1
        return await real_turn(*a)

    n._turn = counted
    await n.start()
    try:
        assert await until(lambda: f.vrrp is not None)
        f.vrrp.fire()                              # master, while the first link check hangs
        assert await until(lambda: "garp" in f.ops)
        start = turns[0]
        await asyncio.sleep(0.2)                   # tick 0.01 s: about 20 turns, not thousands
        assert turns[0] - start < 200
    finally:
        release.set()
        await n.stop()


async def test_a_graceful_stop_says_the_live_peer_has_the_connections(caplog):
    """Issue 17, item 14: a graceful stop logged "N connections dropped with it" even with a
    live peer holding them through sync (as an IPVS backup carries on the connections the
    master's sync daemon sent it). Two nodes with real sync links on loopback: a's stop says
    its connections were synced to peer b; b, whose peer has gone silent, and a node whose
    peer never answered, say their connections are dropped, and why."""
    import dataclasses

    from tandem.ha import SyncLink
    pa, pb = free_port(), free_port()

    def doc(name: str, port: int, peer: int) -> dict:
        return {**DOC, "node": {**DOC["node"], "name": name, "api": f"127.0.0.1:{free_port()}"},
                "sync": {**DOC["sync"], "port": port, "peers": [f"127.0.0.1:{peer}"]}}

    def real_sync(fakes: Fakes) -> Edges:
        return dataclasses.replace(fakes.edges(), sync=SyncLink)

    a = Node(parse(doc("a", pa, pb), "a.toml"), edges=real_sync(Fakes()))
    b = Node(parse(doc("b", pb, pa), "b.toml"), edges=real_sync(Fakes()))
    lonely = Node(parse(doc("c", free_port(), free_port()), "c.toml"), edges=real_sync(Fakes()))
    caplog.set_level("INFO", logger="tandem.node")
    for n in (a, b, lonely):
        await n.start()
    try:
        # a client's SYN through a's engine, and one through the lonely node's: sync sends a
        # new connection at once, so b holds a's
        for n in (a, lonely):
            assert n.engine.handle(tcp("198.18.1.10", VIP, 40000, 80, "S"), time.monotonic())
        assert await until(lambda: b.engine.table.count == 1)
        assert [n.engine.table.count for n in (a, b, lonely)] == [1, 1, 1]
        assert await until(lambda: a.sync.last_heard() is not None
                           and b.sync.last_heard() is not None)
        await a.stop()
        a_says = [r.getMessage() for r in caplog.records if r.getMessage().startswith("node a: stopped")]
        assert len(a_says) == 1 and "its 1 connections were synced to peer b (last heard" in a_says[0], a_says
        assert "dropped" not in a_says[0], a_says
        # b hears nothing from a any more: once that is longer than three heartbeats, its
        # stop says its connections go with it
        assert await until(lambda: b.sync.last_heard()[1] > b.sync.live_within)
    finally:
        for n in (a, b, lonely):
            await n.stop()
    says = {r.getMessage().split(":")[0]: r.getMessage() for r in caplog.records
            if " stopped" in r.getMessage()}
    assert "dropped with it: peer a last heard" in says["node b"], says
    assert says["node c"] == "node c: stopped (1 connections dropped with it: no peer heard)", says


async def test_a_node_without_election_freezes_its_start_up_objects():
    """GcFreezer: the objects a node makes while starting are long-lived; a node that holds
    no election (no [vrrp]) moves them out of the collector's view once started, as an
    elected one does when its election starts, so full collections under a stream of new
    connections scan only what is young (conn_rate measured the difference)."""
    import gc
    f = Fakes()
    doc = {k: v for k, v in DOC.items() if k not in ("vrrp", "sync")}
    doc["node"] = {**doc["node"], "role": "master"}
    n = node(f, doc)
    gc.unfreeze()
    try:
        await n.start()
        try:
            assert gc.get_freeze_count() > 0
        finally:
            await n.stop()
    finally:
        gc.unfreeze()
