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


def test_the_ipv6_labs_configs_serve_the_ipv6_vip_in_engine_mode_through_the_laddr6():
    """`--ipv6`: each director serves the IPv6 VIP (engine forwarding, maglev) through its
    own IPv6 laddr to the real servers' IPv6 addresses; the laddr6 is in its engine pool."""
    desc = cluster_plan.plan("tc6", 3, ipv6=True)
    for d in desc["directors"]:
        cfg = parse(cluster.node_config("tc6", desc, d["name"]), f"{d['name']}.toml")
        svc = next(s for s in cfg.services if s.vip == desc["vip6"])
        assert svc.forwarding == "engine" and svc.scheduler == "maglev"
        assert list(svc.laddrs) == [d["laddr6"]]
        assert [r.addr for r in svc.real_servers] == [r["addr6"] for r in desc["real_servers"]]
        assert cfg.cluster.members[d["name"]] == tuple(sorted(d["laddrs"]))
        assert cfg.cluster.kernel_laddrs == {o["kernel_laddr"] for o in desc["directors"]}


def test_a_join_rewrites_every_config_with_the_services_lab_up_added(tmp_path, monkeypatch):
    """`lab up` records the services a benchmark added (bench.cluster's UDP and TCP) in the
    lab's state; a join rewrites every director's config from that state
    (cluster.write_configs, as `up` wrote them), the new director's included: once they
    were dropped from every config a join rewrote."""
    from bench.cluster import tcp_service, udp_service
    from director.config import load
    from lab import state as st
    monkeypatch.setattr(st, "RUN_ROOT", tmp_path)
    st.state_dir("tcl").mkdir()
    extra = [udp_service(), tcp_service()]
    state = {"cluster": cluster_plan.plan("tcl", 3), "configs": {}, "extra_services": extra}
    cluster.write_configs("tcl", state)
    state["cluster"]["directors"].append(cluster_plan.director("tcl", "d"))   # the join
    cluster.write_configs("tcl", state)
    assert sorted(state["configs"]) == ["a", "b", "c", "d"]
    for d in state["cluster"]["directors"]:
        cfg = load(state["configs"][d["name"]])
        assert sorted(cfg.cluster.members) == ["a", "b", "c", "d"]
        assert [(s.proto, s.port) for s in cfg.services[1:-1]] == [
            (x["proto"], x["port"]) for x in extra]
        # the engine-mode services share the director's first laddr; the kernel-mode
        # service (the last) has its own
        assert all(list(s.laddrs) == d["laddrs"][:1] for s in cfg.services[:-1]), cfg.services
        assert cfg.services[-1].forwarding == "kernel"
        assert list(cfg.services[-1].laddrs) == [d["kernel_laddr"]] == d["laddrs"][1:]


def test_a_cluster_drill_settles_when_every_answering_director_agrees_who_serves_each_laddr():
    """A cluster has no master: `tandem drill` against the cluster lab waits until every
    director that answers is past its start-up and all of them name the same director for
    every laddr (a killed one does not answer; an adoption seen by one only is not yet)."""
    from lab.drill_pairs import LabCluster

    def st(state, served):
        return {"cluster": {"state": state, "members": {
            m: {"served_by": {f"198.19.42.{11 + i}": s}} for i, (m, s) in enumerate(served.items())}}}
    adopted = {"a": "a", "b": "c", "c": "c"}
    lc = LabCluster("tclnone")
    assert lc.settled({"a": st("active", adopted), "b": {}, "c": st("active", adopted)})
    assert not lc.settled({"a": st("active", {"a": "a", "b": "b", "c": "c"}), "b": {},
                           "c": st("active", adopted)})
    assert not lc.settled({"a": st("joining", adopted), "c": st("active", adopted)})
    assert not lc.settled({"a": {}, "b": {}})
