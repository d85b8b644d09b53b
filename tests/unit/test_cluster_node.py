"""Cluster mode in the node (tandem/cluster.py): three real Nodes in one process, syncing
over loopback with the real sync link (unicast, every director a peer of every other), a
fake kernel (no root) and a recording BIRD adapter.  Each director announces the VIP and
its own laddr while healthy; a connection one director opens reaches the others, and a
packet of it arriving at another is forwarded with the owner's laddr:lport to the same
real server; a stopping director withdraws everything and one survivor adopts its laddr;
no usable real server withdraws the VIP and keeps the laddr; an engine that is not
running announces nothing."""
from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from dataclasses import replace

import pytest

from scapy.layers.inet import IP, TCP

from director.config import parse
from ha.announce import Inputs, adopted
from tandem.cluster import ADOPT_GRACE, ClusterRunner
from tandem.node import Edges, Node
from tests.fake_kernel import FakeKernel
from tests.helpers import tcp

VIP, CLIENT = "198.19.41.100", "198.19.44.10"
LADDR = {"a": "198.19.42.11", "b": "198.19.42.12", "c": "198.19.42.13"}
RS = ["198.19.46.21", "198.19.46.22", "198.19.46.23"]
KEY = "cluster-test-sync-key-0123456789"
TOKEN = "cluster-test-api-token-0123456789"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class FakeBird:
    """What BIRD was told, in order (ha.bird_io.BirdAnnouncer's one call)."""

    def __init__(self) -> None:
        self.applied: list[frozenset[str]] = []
        self.adopted: frozenset[str] = frozenset()      # announced for a dead peer, last
        self.fail = False

    def apply(self, prefixes, adopted=()) -> str:
        if self.fail:
            raise RuntimeError("birdc: Unable to connect to server control socket")
        self.applied.append(frozenset(prefixes))
        self.adopted = frozenset(adopted)
        return "Reconfigured"

    @property
    def last(self) -> frozenset[str] | None:
        return self.applied[-1] if self.applied else None


def config(name: str, names: list[str], sync_ports: dict[str, int] | None):
    """Director `name`'s config; its API on a port the OS picks at start (read back with
    Node.api_address: a port chosen beforehand may be taken by the time it binds)."""
    return replace(parse(config_doc(name, names, sync_ports), f"{name}.toml"), api_port=0)


def config_doc(name: str, names: list[str], sync_ports: dict[str, int] | None) -> dict:
    doc = {
        "node": {"name": name, "api": "127.0.0.1:9", "tick": 0.01, "state_dir": "",
                 "api_token": TOKEN,
                 "mode": "cluster"},
        "services": [{"proto": "tcp", "vip": VIP, "port": 80, "scheduler": "maglev",
                      "laddrs": [LADDR[name]],
                      "real_servers": [{"addr": a, "port": 8080} for a in RS]}],
        "cluster": {"members": {n: [LADDR[n]] for n in names}, "drain_timeout": 1.0},
    }
    if sync_ports:
        doc["sync"] = {"key": KEY, "mode": "unicast", "bind": "127.0.0.1",
                       "port": sync_ports[name],
                       "peers": [f"127.0.0.1:{sync_ports[n]}" for n in names if n != name]}
    return doc


def call(node: Node, path: str, method: str = "GET") -> dict:
    host, port = node.api_address
    req = urllib.request.Request(f"http://{host}:{port}{path}", method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def get_status(node: Node) -> dict:
    return call(node, "/status")


def get_metrics(node: Node) -> set[str]:
    host, port = node.api_address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        return {line for line in r.read().decode().splitlines() if not line.startswith("#")}


async def until(cond, what: str, wait: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + wait
    while not cond():
        assert loop.time() < end, f"not within {wait} s: {what}"
        await asyncio.sleep(0.02)


def own(name: str) -> frozenset[str]:
    return frozenset({f"{VIP}/32", f"{LADDR[name]}/32"})


async def test_three_directors_announce_sync_forward_foreign_flows_and_adopt():
    names = ["a", "b", "c"]
    sync_ports = dict(zip(names, free_ports(3)))
    birds = {n: FakeBird() for n in names}
    nodes = {n: Node(config(n, names, sync_ports), edges=Edges(kernel=FakeKernel(), bird=birds[n]))
             for n in names}
    # every member's laddrs are queued on every director (an adopted one needs no new rule)
    assert nodes["a"]._queued(nodes["a"].cfg) == sorted([VIP, *LADDR.values()])
    try:
        for n in names:
            await nodes[n].start()
        await until(lambda: all(birds[n].last == own(n) for n in names), "each announces its own")
        # the cluster speaks through the sync link's own announce, never a patched one
        assert all("announce" not in vars(nodes[n].sync) for n in names)
        await until(lambda: all(all(m["alive"] for m in nodes[n].cluster.status()["members"].values())
                                for n in names), "every member alive everywhere")

        # a opens a connection: rewritten to a real server from a's laddr
        syn = nodes["a"].engine.handle(tcp(CLIENT, VIP, 40000, 80, "S", seq=1000), nodes["a"].clock())
        out = IP(syn)
        assert out.src == LADDR["a"] and out.dst in RS
        rs, lport = out.dst, out[TCP].sport
        # ... and reaches both peers (a SYN is synced at once)
        await until(lambda: all(nodes[n].cluster.status()["flows_foreign"] == 1 for n in "bc"),
                    "the entry synced to b and c")
        assert nodes["a"].cluster.status()["flows_owned"] == 1
        assert nodes["b"].cluster.status()["members"]["a"]["flows"] == 1
        # /status: a cluster director is a member (no master in a cluster), active, and
        # lists every member with what it says of itself and who serves its laddrs
        st = await asyncio.to_thread(get_status, nodes["b"])
        assert st["role"] == "member" and st["cluster"]["state"] == "active"
        assert {m: (v["said"], v["served_by"]) for m, v in st["cluster"]["members"].items()} == {
            m: ("active", {LADDR[m]: m}) for m in names}
        # ... and /metrics: the same membership, state, announcement and flows per member
        metrics = await asyncio.to_thread(get_metrics, nodes["b"])
        assert {'tandem_cluster_state{state="active"} 1.0',
                'tandem_cluster_state{state="isolated"} 0.0',
                'tandem_cluster_member_alive{member="a"} 1.0',
                'tandem_cluster_member_flows{member="a"} 1.0',
                'tandem_cluster_member_flows{member="b"} 0.0',
                f'tandem_cluster_laddr_served_by{{laddr="{LADDR["a"]}",member="a",owner="a"}} 1.0',
                f'tandem_cluster_announced{{prefix="{VIP}/32"}} 1.0',
                'tandem_cluster_adopted_laddrs 0.0'} <= metrics, sorted(
                    m for m in metrics if "cluster" in m)
        assert not any("tandem_vrrp_state" in m for m in metrics)    # no election, no VRRP state
        # the router moved the flow to b: b forwards it with a's laddr:lport, same real server
        fwd = IP(nodes["b"].engine.handle(tcp(CLIENT, VIP, 40000, 80, "A", seq=1001, ack=1),
                                              nodes["b"].clock()))
        assert (fwd.src, fwd[TCP].sport, fwd.dst, fwd[TCP].dport) == (LADDR["a"], lport, rs, 8080)

        # a drains: VIP withdrawn at once, its laddr kept while it has a connection; the
        # peers hear it say draining and adopt nothing; past drain_timeout (1 s) with the
        # connection still open, it withdraws everything and still nobody adopts
        st = await asyncio.to_thread(call, nodes["a"], "/cluster/drain", "POST")
        assert birds["a"].last == {f"{LADDR['a']}/32"} and st["state"] == "draining"
        await until(lambda: all(nodes[n].cluster.status()["members"]["a"]["said"] == "draining"
                                for n in "bc"), "the peers hear a drains")
        await until(lambda: birds["a"].last == frozenset(), "the drain's timeout", wait=5)
        assert nodes["a"].cluster.status()["state"] == "drained"
        assert nodes["a"].cluster.announcer.last.reason == "drain timeout (1 connections left)"
        assert all(birds[n].last == own(n) for n in "bc")
        assert all(nodes[n].cluster.status()["members"]["a"]["served_by"] == {LADDR["a"]: "a"}
                   for n in "bc")
        # cancelled: a announces again
        st = await asyncio.to_thread(call, nodes["a"], "/cluster/drain", "DELETE")
        assert st["state"] == "active" and birds["a"].last == own("a")

        # a stops: it says it leaves, withdraws everything; exactly one survivor adopts its laddr
        await nodes["a"].stop()
        assert birds["a"].last == frozenset()
        adopters = lambda: [n for n in "bc" if f"{LADDR['a']}/32" in (birds[n].last or ())]
        await until(lambda: len(adopters()) == 1, "one survivor announces a's laddr")
        n = adopters()[0]
        assert birds[n].last == own(n) | {f"{LADDR['a']}/32"}
        st = nodes[n].cluster.status()
        assert st["adopted"] == [LADDR["a"]] and st["members"]["a"]["leaving"]
        assert st["members"]["a"]["said"] == "leaving"
        assert st["members"]["a"]["served_by"] == {LADDR["a"]: n}
    finally:
        for node in nodes.values():
            await node.stop()


async def test_no_usable_real_server_withdraws_the_vip_and_keeps_the_laddr():
    bird = FakeBird()
    node = Node(config("a", ["a"], None), edges=Edges(kernel=FakeKernel(), bird=bird))
    try:
        await node.start()
        assert bird.last == own("a")
        assert node.state.cluster_status()["reason"] == "healthy"
        svc = next(iter(node.engine.services.values()))
        for addr in RS:
            node.control.set_weight(svc.name, addr, 8080, 0)
        await until(lambda: bird.last == {f"{LADDR['a']}/32"}, "the VIP withdrawn")
        node.control.set_weight(svc.name, RS[0], 8080, 1)
        await until(lambda: bird.last == own("a"), "the VIP announced again")
    finally:
        await node.stop()
    assert bird.last == frozenset()


async def test_engine_not_running_announces_nothing_and_bird_failures_are_retried():
    cfg = config("a", ["a", "b", "c"], None)
    node = Node(cfg, edges=Edges(kernel=FakeKernel()))
    bird, ok = FakeBird(), [True]
    t = [100.0]
    runner = ClusterRunner(cfg, node.engine, None, clock=lambda: t[0], bird=bird,
                           engine_ok=lambda: ok[0])
    runner.started = t[0]
    await runner.step()
    # b never heard, still within the start-up grace: not adopted
    assert bird.last == own("a")
    t[0] += ADOPT_GRACE + 0.1
    await runner.step()
    # without sync, a hears one of three: isolated, it withdraws (b and c may well be
    # alive and routed, and one of them adopting a's laddr)
    assert bird.last == frozenset() and runner.state() == "isolated"
    del runner.members["c"]             # one of two: a half keeps its own, adopts nothing
    await runner.step()
    assert bird.last == own("a") and runner.state() == "active"
    ok[0] = False
    await runner.step()
    assert bird.last == frozenset() and runner.announcer.last.reason == "engine not running"
    ok[0], bird.fail = True, True
    await runner.step()
    assert runner.stats["bird_errors"] == 1 and bird.last == frozenset()
    bird.fail = False
    await runner.step()                      # nothing changed, but BIRD has not taken it yet
    assert bird.last == own("a")


async def test_a_director_joins_through_a_reload_of_the_others(tmp_path):
    """a and b run; c joins: a's and b's files gain c as a member and a sync peer and a
    reload applies it (no restart: their connections and routes stay), then c starts.  c
    pulls the table before it announces, a's connection reaches c and c's reaches a and b;
    c's laddr is queued on a and b from the reload on and no one adopts it while c starts;
    every director then sees three members alive, each serving its own laddr."""
    from schema.core import dump_toml
    from director.config import load
    names = ["a", "b", "c"]
    sync_ports = dict(zip(names, free_ports(3)))
    api_ports = dict(zip(names, free_ports_tcp(3)))

    def write(name: str, members: list[str]) -> str:
        doc = config_doc(name, members, sync_ports)
        doc["node"]["api"] = f"127.0.0.1:{api_ports[name]}"
        path = tmp_path / f"{name}.toml"
        path.write_text(dump_toml(doc))
        return str(path)

    birds = {n: FakeBird() for n in names}
    kernels = {n: FakeKernel() for n in names}
    paths = {n: write(n, ["a", "b"]) for n in "ab"}
    nodes = {n: Node(load(paths[n]), path=paths[n],
                     edges=Edges(kernel=kernels[n], bird=birds[n])) for n in "ab"}
    try:
        for n in "ab":
            await nodes[n].start()
        await until(lambda: all(birds[n].last == own(n) for n in "ab"), "a and b announce")
        syn = nodes["a"].engine.handle(tcp(CLIENT, VIP, 40001, 80, "S", seq=1000), nodes["a"].clock())
        assert IP(syn).src == LADDR["a"]
        syn = nodes["b"].engine.handle(tcp(CLIENT, VIP, 40003, 80, "S", seq=1000), nodes["b"].clock())
        assert IP(syn).src == LADDR["b"]
        await until(lambda: all(nodes[n].cluster.status()["flows_foreign"] == 1 for n in "ab"),
                    "a's flow at b, b's at a")
        await asyncio.sleep(ADOPT_GRACE)           # past a's and b's own start-up grace

        for n in "ab":
            write(n, names)
            summary = await nodes[n].reload()
            assert summary["members_added"] == ["c"] and summary["sync_peers"] == 2, summary
            assert LADDR["c"] in kernels[n].rules[0]        # c's laddr queued here from now on
            assert nodes[n].cluster.status()["members"]["c"]["served_by"] == {LADDR["c"]: "c"}
        paths["c"] = write("c", names)
        nodes["c"] = Node(load(paths["c"]), path=paths["c"],
                          edges=Edges(kernel=kernels["c"], bird=birds["c"]))
        await nodes["c"].start()
        await until(lambda: birds["c"].last == own("c"), "c announces its own")
        # the table came first, every peer's: a's and b's connections were at c by the
        # time c announced, each from its owner's bulk
        st = nodes["c"].cluster.status()["members"]
        assert (st["a"]["flows"], st["b"]["flows"]) == (1, 1), st
        assert nodes["c"].sync.answered_by() == {"a", "b"}
        syn = nodes["c"].engine.handle(tcp(CLIENT, VIP, 40002, 80, "S", seq=1000), nodes["c"].clock())
        assert IP(syn).src == LADDR["c"]
        await until(lambda: all(nodes[n].cluster.status()["members"]["c"]["flows"] == 1
                                for n in "ab"), "c's flow at a and b")
        await until(lambda: all(all(m["alive"] for m in nodes[n].cluster.status()["members"].values())
                                for n in names), "three members alive everywhere")
        for n in names:
            st = nodes[n].cluster.status()
            assert st["adopted"] == [] and birds[n].last == own(n), st
            assert {m: v["served_by"] for m, v in st["members"].items()} == {
                m: {LADDR[m]: m} for m in names}
        # no one ever announced c's laddr but c
        assert all(f"{LADDR['c']}/32" not in a for n in "ab" for a in birds[n].applied)
    finally:
        for node in nodes.values():
            await node.stop()


async def test_a_reload_changes_membership_only():
    """The membership keys are what a reload applies of [cluster] and [sync]: any other key
    of theirs still needs a restart (the reload is refused, nothing changed)."""
    from director.config import ConfigError, check_reloadable
    ports = dict(zip("abc", free_ports(3)))
    old = parse(config_doc("a", ["a", "b"], ports), "a.toml")
    check_reloadable(old, parse(config_doc("a", ["a", "b", "c"], ports), "a.toml"))   # joins
    check_reloadable(parse(config_doc("a", ["a", "b", "c"], ports), "a.toml"), old)   # leaves
    for section, key, value in (("cluster", "drain_timeout", 5.0), ("sync", "port", 1),
                                ("sync", "heartbeat_interval", 0.5)):
        doc = config_doc("a", ["a", "b", "c"], ports)
        doc[section][key] = value
        with pytest.raises(ConfigError, match=rf"\[{section}\]"):
            check_reloadable(old, parse(doc, "a.toml"))


def test_a_multicast_sync_peers_change_needs_a_restart():
    """Only a unicast sync has peers a reload can change: a cluster on a multicast sync
    whose file changes [sync] peers is refused before anything is applied (the transport
    would refuse the peers after the engine, kernel rules and health targets had changed)."""
    from director.config import ConfigError, check_reloadable, restart_needed
    ports = dict(zip("abc", free_ports(3)))

    def multicast(names: list[str]):
        doc = config_doc("a", names, ports)
        doc["sync"].update(mode="multicast", interface="127.0.0.1")
        del doc["sync"]["bind"]
        return parse(doc, "a.toml")
    old, new = multicast(["a", "b"]), multicast(["a", "b", "c"])
    assert old.ha.sync.mode == "multicast" and old.ha.sync.peers != new.ha.sync.peers
    assert restart_needed(old, new) == ["sync"]
    with pytest.raises(ConfigError, match=r"\[sync\].*restart"):
        check_reloadable(old, new)
    # the members alone stay reloadable on a multicast sync
    same_peers = replace(new, ha=replace(new.ha, sync=old.ha.sync))
    assert restart_needed(old, same_peers) == []


def free_ports_tcp(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def test_a_director_says_joining_until_its_bgp_session_is_up():
    """A director's STATE says `joining` (its peers' adopter keeps its laddrs) from its
    start until BIRD has taken its own laddrs and reports a BGP session Established, then
    `active`; once up it stays so (a later flap is the router's BFD's to see)."""
    cfg = config("a", ["a"], None)
    node = Node(cfg, edges=Edges(kernel=FakeKernel()))
    bird = FakeBird()
    session = [False]
    bird.established = lambda: session[0]
    runner = ClusterRunner(cfg, node.engine, None, clock=lambda: 100.0, bird=bird)
    runner.started = 100.0
    await runner.step()
    assert bird.last == own("a")
    assert runner.said() == "joining" and runner.state() == "joining"
    await runner.step()
    assert runner.said() == "joining"
    session[0] = True
    await runner.step()
    assert runner.said() == "active" and runner.state() == "active"
    session[0] = False
    await runner.step()
    assert runner.said() == "active"


async def test_a_joining_director_adopts_nothing_until_its_bgp_session_is_up():
    """c is dead and b active; a, whose own BGP session is not up yet (it says
    `joining`), adopts none of c's laddrs (b, hearing a say so, takes them all); once its
    session is up it says `active` and takes its share."""
    from types import SimpleNamespace

    from syncd.repair import PeerStream
    pools = {"a": ("198.19.42.11", "198.19.42.21", "198.19.42.31"),
             "b": ("198.19.42.12",),
             "c": tuple(f"198.19.42.{i}" for i in range(40, 56))}
    cfg = config("a", ["a", "b", "c"], None)
    cfg = replace(cfg, cluster=replace(cfg.cluster, members=pools))
    node = Node(cfg, edges=Edges(kernel=FakeKernel()))
    b = PeerStream(epoch=2, send_time=0.0)
    b.heard, b.state = 100.0, SimpleNamespace(role="active")
    sync = SimpleNamespace(receiver=SimpleNamespace(peers={"b": b}), live_within=0.6,
                           announce=lambda *a: None)
    bird, session = FakeBird(), [False]
    bird.established = lambda: session[0]
    runner = ClusterRunner(cfg, node.engine, sync, clock=lambda: 100.0, bird=bird)
    runner.started, runner._synced = 0.0, True
    share = adopted(Inputs(name="a", vips=(VIP,), laddrs=pools, alive=frozenset("ab")))
    assert share, "a is the adopter of some of c's laddrs once active"
    await runner.step()
    assert runner.said() == "joining" and runner.announcer.adopted == set()
    assert bird.last == {f"{VIP}/32"} | {f"{a}/32" for a in pools["a"]}
    await runner.step()
    assert runner.announcer.adopted == set()
    session[0] = True
    await runner.step()                 # its routes are up: active from now on
    assert runner.said() == "active"
    await runner.step()
    assert runner.announcer.adopted == share


async def test_a_peer_heard_before_its_first_state_counts_as_joining():
    """A restarted member's new epoch is heard (heartbeats) before its STATE arrives (the
    one sent before its epoch was proven is dropped): it is joining, so its adopter keeps
    its laddrs, until it says `active`."""
    from types import SimpleNamespace

    from syncd.repair import PeerStream
    cfg = config("a", ["a", "b", "c"], None)
    node = Node(cfg, edges=Edges(kernel=FakeKernel()))
    b = PeerStream(epoch=2, send_time=0.0)
    b.heard = 100.0
    sync = SimpleNamespace(receiver=SimpleNamespace(peers={"b": b}), live_within=0.6)
    runner = ClusterRunner(cfg, node.engine, sync, clock=lambda: 100.0, bird=FakeBird())
    runner.started = 0.0
    assert runner.membership(100.0)[2] == {"b"}
    b.state = SimpleNamespace(role="joining")
    assert runner.membership(100.0)[2] == {"b"}
    b.state = SimpleNamespace(role="active")
    alive, _leaving, joining = runner.membership(100.0)
    assert joining == set() and "b" in alive and "c" not in alive


def test_a_membership_change_is_logged_in_one_line(caplog):
    """A reload's membership change says what changed in one line: a member removed as
    well as one added (the removal was once compared after the assignment, never seen)."""
    import logging
    cfg = config("a", ["a", "b", "c"], None)
    node = Node(cfg, edges=Edges(kernel=FakeKernel()))
    runner = ClusterRunner(cfg, node.engine, None, clock=lambda: 100.0, bird=FakeBird())
    caplog.set_level(logging.INFO, logger="tandem.cluster")

    def reload(names, pools=None):
        cc = config("a", names, None).cluster
        if pools:
            cc = replace(cc, members={**cc.members, **pools})
        caplog.clear()
        added = runner.set_members(cc, 100.0)
        return added, [r.getMessage() for r in caplog.records]
    assert reload(["a", "b"]) == ([], ["cluster a: members now a b (removed c)"])
    assert reload(["a", "b"]) == ([], [])
    assert reload(["a", "b", "c"], {"b": ("198.19.42.22",)}) == (
        ["c"], ["cluster a: members now a b c (added c; laddrs changed b)"])
    assert runner.members["b"] == ("198.19.42.22",)


def test_pair_mode_has_no_cluster():
    doc = {"node": {"name": "a", "api": "127.0.0.1:1", "state_dir": ""},
           "services": [{"proto": "tcp", "vip": VIP, "port": 80, "laddrs": [LADDR["a"]],
                         "real_servers": [{"addr": RS[0], "port": 8080}]}]}
    node = Node(parse(doc, "p.toml"), edges=Edges(kernel=FakeKernel()))
    assert node.cluster is None and node.state.cluster_status() is None
    assert asyncio.run(node.state.cluster_drain(True)) is None     # the API answers 409


async def test_the_start_up_grace_ends_for_a_member_the_router_routes_no_more():
    """A starting director counts a member it has not heard yet as alive for ADOPT_GRACE
    (it may be starting too), unless the router's view shows it unrouted: nothing of it
    serves then, and its peers past their grace have given its laddrs to this one."""
    cfg = config("a", ["a", "b", "c"], None)
    node = Node(cfg, edges=Edges(kernel=FakeKernel()))

    class ViewBird(FakeBird):
        def routed_owners(self):
            return frozenset({f"{LADDR['b']}/32"})

    t = [100.0]
    runner = ClusterRunner(cfg, node.engine, None, clock=lambda: t[0], bird=ViewBird())
    runner.started = t[0]
    assert runner.membership(t[0])[0] == {"a", "b", "c"}          # no view yet: the grace
    await runner.view.refresh(t[0])
    assert runner.membership(t[0])[0] == {"a", "b"}               # c unrouted: not alive
