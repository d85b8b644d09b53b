"""The cluster lab's plan (lab/cluster_plan.py): names, addresses and expected routes."""
from __future__ import annotations

import ipaddress

import pytest

from lab import cluster_plan, plan as pair_plan


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("kernel", [True, False])
def test_plan_lists_n_directors_and_the_routes_the_router_should_hold(n, kernel):
    """Each VIP via every director, each laddr via its owner; with the kernel-mode service
    (the default) a second VIP and a second laddr per director, its own."""
    desc = cluster_plan.plan("cl", n, kernel)
    names = [d["name"] for d in desc["directors"]]
    assert names == [chr(ord("a") + i) for i in range(n)]
    routes = desc["router"]["routes"]
    assert cluster_plan.vips(desc) == [desc["vip"]] + ([cluster_plan.KERNEL_VIP] if kernel else [])
    for vip in cluster_plan.vips(desc):
        assert routes[f"{vip}/32"] == [d["front_addr"] for d in desc["directors"]]
    for d in desc["directors"]:
        assert len(d["laddrs"]) == 1 + kernel and d["kernel_laddr"] == (
            d["laddrs"][1] if kernel else None)
        for a in d["laddrs"]:
            assert routes[f"{a}/32"] == [d["front_addr"]]
    assert len(routes) == (n + 1) * (1 + kernel)


def test_addresses_unique_and_in_the_cluster_range_away_from_the_pair_lab():
    desc = cluster_plan.plan("cl", 8)
    addrs = cluster_plan.addresses(desc)
    assert len(addrs) == len(set(addrs))
    pair_nets = [ipaddress.ip_network(x) for x in
                 (pair_plan.CLIENT_NET, pair_plan.FRONT_NET, pair_plan.BACK_NET)]
    for a in map(ipaddress.ip_address, addrs):
        assert a in cluster_plan.CLUSTER_RANGE and a in pair_plan.LAB_NET
        assert not any(a in net for net in pair_nets)


def test_plan_refuses_bad_sizes_and_prefixes():
    for n in (0, 9):
        with pytest.raises(ValueError):
            cluster_plan.plan("cl", n)
    with pytest.raises(ValueError):
        cluster_plan.plan("bad prefix!", 3)


def test_a_joining_director_gets_the_addresses_of_its_letter():
    """`tandem lab join d` on a lab of three adds what a lab of four would have had as d."""
    assert cluster_plan.director("tcl", "d") == cluster_plan.plan("tcl", 4)["directors"][3]
    for bad in ("z", "", "ab", "A"):
        with pytest.raises(ValueError, match="a cluster director is one of a..h"):
            cluster_plan.director("tcl", bad)
