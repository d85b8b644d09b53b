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


@pytest.mark.parametrize("kernel", [True, False])
def test_the_ipv6_plan_adds_a_vip6_and_a_laddr6_per_director_routed_by_family(kernel):
    """`--ipv6`: the IPv6 VIP via every director's IPv6 address, each IPv6 laddr (/128) via
    its owner's; the IPv4 routes stay exactly as without it."""
    desc = cluster_plan.plan("cl", 3, kernel, ipv6=True)
    routes, v4 = desc["router"]["routes"], cluster_plan.plan("cl", 3, kernel)["router"]["routes"]
    assert {k: v for k, v in routes.items() if ":" not in k} == v4
    assert routes[f"{desc['vip6']}/128"] == [d["front_addr6"] for d in desc["directors"]]
    for d in desc["directors"]:
        assert d["laddrs"][-1] == d["laddr6"] and routes[f"{d['laddr6']}/128"] == [d["front_addr6"]]
        assert cluster_plan.hop(d, desc["vip6"]) == d["front_addr6"]
        assert cluster_plan.hop(d, desc["vip"]) == d["front_addr"]
    assert len(routes) == len(v4) + 1 + 3
    assert cluster_plan.vips(desc)[-1] == desc["vip6"]
    assert "vip6" not in cluster_plan.plan("cl", 3, kernel) and cluster_plan.addresses6(
        cluster_plan.plan("cl", 3, kernel)) == []


def test_ipv6_addresses_unique_in_their_range_away_from_the_pair_labs_ipv6():
    from lab import bgp6, plan6
    desc = cluster_plan.plan("cl", 8, ipv6=True)
    addrs = cluster_plan.addresses6(desc)
    assert len(addrs) == len(set(addrs)) == 5 + 2 * 8 + 3
    assert cluster_plan.addresses(desc) == cluster_plan.addresses(cluster_plan.plan("cl", 8))
    pair_nets = [ipaddress.ip_network(x) for x in
                 (plan6.CLIENT_NET6, plan6.FRONT_NET6, plan6.BACK_NET6)]
    for a in map(ipaddress.ip_address, addrs):
        assert a in bgp6.RANGE6 and a in plan6.LAB_NET6
        assert not any(a in net for net in pair_nets)
    # every host's IPv6 address mirrors its IPv4 one
    assert [d["front_addr6"] for d in desc["directors"][:2]] == ["2001:2:0:40::11", "2001:2:0:40::12"]
    assert desc["directors"][0]["laddr6"] == "2001:2:0:42::11"
    assert [r["addr6"] for r in desc["real_servers"]] == [f"2001:2:0:46::{i}" for i in (21, 22, 23)]


def test_a_director_joining_an_ipv6_lab_gets_the_ipv6_addresses_of_its_letter():
    assert cluster_plan.director("tc6", "d", ipv6=True) == \
        cluster_plan.plan("tc6", 4, ipv6=True)["directors"][3]
