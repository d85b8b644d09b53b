"""The cluster lab's node configs (lab/cluster.py) are what the node reads: each director
in cluster mode, maglev, its own laddr, sync unicast to every other director, and the
same `[cluster] members` on every director."""
from __future__ import annotations

from director.config import parse
from lab import cluster, cluster_plan


def test_every_directors_config_is_read_by_the_node():
    desc = cluster_plan.plan("tcl", 4)
    cfgs = {d["name"]: parse(cluster.node_config("tcl", desc, d["name"]), f"{d['name']}.toml")
            for d in desc["directors"]}
    members = {d["name"]: tuple(d["laddrs"]) for d in desc["directors"]}
    for d in desc["directors"]:
        cfg = cfgs[d["name"]]
        assert cfg.mode == "cluster" and cfg.cluster.members == members
        assert cfg.laddrs == d["laddrs"] and cfg.services[0].scheduler == "maglev"
        peers = {h for h, _ in cfg.ha.sync.peers}
        assert peers == {o["front_addr"] for o in desc["directors"]} - {d["front_addr"]}
        assert cfg.ha.sync.bind == d["front_addr"] and cfg.ha.vrrp is None
        assert cfg.cluster.bird_socket.endswith(f"bird-{d['name']}.ctl")
