"""Tracked links in cluster mode (tandem/cluster.py `links_changed`, tandem/node.py): the
`[interfaces]` a pair tracks are tracked by a cluster director too, and feed the announcer's
`node_ok`.  Three real Nodes syncing over loopback, a fake kernel whose links a test takes
down, a recording BIRD adapter (tests/unit/test_cluster_node.py).  b's back link goes down:
b announces nothing and says `fault`, its peers adopt its laddr (one of them), /status says
why, one log line; up again: b announces again and the adopter gives the laddr back.  No
address is put on the interfaces in cluster mode (BGP routes the /32s)."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from director.config import parse
from tandem.node import Edges, Node
from tests.fake_kernel import FakeKernel
from tests.unit.test_cluster_node import (LADDR, FakeBird, config_doc, free_ports, get_status,
                                          own, until)


def tracked_config(name: str, names: list[str], sync_ports: dict[str, int]):
    doc = {**config_doc(name, names, sync_ports),
           "interfaces": {"front": "front", "back": "back"}}
    return replace(parse(doc, f"{name}.toml"), api_port=0)


def laddr_of(name: str) -> str:
    return f"{LADDR[name]}/32"


async def test_a_tracked_link_down_withdraws_the_director_and_its_peers_adopt_its_laddr(caplog):
    caplog.set_level(logging.INFO, logger="tandem.cluster")
    names = ["a", "b", "c"]
    sync_ports = dict(zip(names, free_ports(3)))
    birds = {n: FakeBird() for n in names}
    kernels = {n: FakeKernel(links=("front", "back")) for n in names}
    nodes = {n: Node(tracked_config(n, names, sync_ports),
                     edges=Edges(kernel=kernels[n], bird=birds[n])) for n in names}
    assert nodes["b"]._tracked == ["front", "back"]
    adopters = lambda: [n for n in "ac" if laddr_of("b") in (birds[n].last or ())]
    try:
        for n in names:
            await nodes[n].start()
        await until(lambda: all(birds[n].last == own(n) for n in names), "each announces its own")
        await until(lambda: all(all(m["said"] == "active" for m in nodes[n].cluster.status()[
            "members"].values()) for n in names), "every member active everywhere")

        kernels["b"].links["back"] = False
        await until(lambda: birds["b"].last == frozenset(), "b withdraws everything")
        await until(lambda: len(adopters()) == 1, "one peer adopts b's laddr")
        adopter = adopters()[0]
        assert birds[adopter].last == own(adopter) | {laddr_of("b")}
        st = (await asyncio.to_thread(get_status, nodes["b"]))["cluster"]
        assert (st["state"], st["reason"], st["links_down"]) == ("down", "node unhealthy", ["back"])
        assert st["members"]["b"]["said"] == "fault"
        seen = nodes[adopter].cluster.status()["members"]["b"]
        assert (seen["said"], seen["alive"], seen["served_by"]) == (
            "fault", False, {LADDR["b"]: adopter}), seen
        await asyncio.sleep(0.5)        # more link checks: the same answer, no new line
        down_lines = [r.getMessage() for r in caplog.records if "tracked interfaces" in r.getMessage()]
        assert down_lines == ["cluster b: tracked interfaces down: back: announcing nothing"]

        kernels["b"].links["back"] = True
        await until(lambda: birds["b"].last == own("b"), "b announces again")
        await until(lambda: adopters() == [], "the adopter gives b's laddr back")
        assert nodes["b"].cluster.status()["links_down"] == []
        assert nodes[adopter].cluster.status()["members"]["b"]["said"] == "active"
        lines = [r.getMessage() for r in caplog.records if "tracked interfaces" in r.getMessage()]
        assert lines == down_lines + ["cluster b: tracked interfaces up again: back"]
        # the interfaces are tracked only: no VIP or laddr was ever put on them
        assert all(not any(k.addresses.values()) for k in kernels.values())
        assert not any(op in ("add_addresses", "announce") for k in kernels.values()
                       for op, _ in k.calls)
    finally:
        for node in nodes.values():
            await node.stop()


async def test_a_director_starting_with_a_tracked_link_down_never_announces():
    """The links are looked at before the first announcement: a director whose tracked
    link is down at its start tells BIRD nothing but the empty announcement."""
    kernel, bird = FakeKernel(links=("front", "back")), FakeBird()
    kernel.links["front"] = False
    cfg = replace(parse({**config_doc("a", ["a"], None),
                         "interfaces": {"front": "front", "back": "back"}}, "a.toml"), api_port=0)
    node = Node(cfg, edges=Edges(kernel=kernel, bird=bird))
    try:
        await node.start()
        await asyncio.sleep(0.3)        # a few steps of the announcer and link checks
        assert set(bird.applied) == {frozenset()}, bird.applied
        st = node.cluster.status()
        assert (st["state"], st["links_down"], st["members"]["a"]["said"]) == (
            "down", ["front"], "fault")
        kernel.links["front"] = True
        await until(lambda: bird.last == own("a"), "announced once the link is up")
    finally:
        await node.stop()
