"""A dual-stack node (issue 15): one node holds an IPv4 VIP and an IPv6 VIP, with laddrs of
both families.  One VRRP instance elects the node's role in the family of its
`primary_address` and advertises only that family's VIPs (RFC 5798 §5.2.9: one family per
advert); the VIPs and laddrs of the other family move with the role all the same, as
keepalived moves a `virtual_ipaddress_excluded` list, so both families always change hands
together (GARP for IPv4, unsolicited NA for IPv6)."""
from __future__ import annotations

import asyncio
import collections
import copy

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from director.config import ConfigError, parse
from director.engine import Engine
from ha.takeover import Takeover
from tandem.ha import takeover_config
from tests.fake_kernel import FakeKernel

V4 = {"proto": "tcp", "vip": "198.18.0.100", "port": 80, "laddrs": ["198.18.2.100"],
      "real_servers": [{"addr": "198.18.2.21", "port": 8080}]}
V6 = {"proto": "tcp", "vip": "2001:2::100", "port": 80, "laddrs": ["2001:2:0:2::100"],
      "real_servers": [{"addr": "2001:2:0:2::21", "port": 8080}]}
PAIR = {"interfaces": {"front": "front", "back": "back"},
        "vrrp": {"vrid": 51, "primary_address": "198.18.0.11"},
        "sync": {"key": "tandem-lab-sync-key-not-secret", "interface": "198.18.2.11"}}


def doc(*services, **sections) -> dict:
    d = {"node": {"name": "a", "api": "198.18.0.11:9100"}, "services": [copy.deepcopy(s) for s in services]}
    d.update(copy.deepcopy(PAIR))
    for name, table in sections.items():
        d[name] = {**d.get(name, {}), **table}
    return d


def test_an_ipv4_election_advertises_the_ipv4_vips_and_the_ipv6_ones_move_with_it():
    cfg = parse(doc(V4, V6), "a.toml")
    assert cfg.vips == ["198.18.0.100", "2001:2::100"]
    assert cfg.ha.vrrp.addresses == ("198.18.0.100",)
    assert cfg.ha.vrrp.family == 4
    t = takeover_config(cfg)
    assert set(t.vips) == {"198.18.0.100", "2001:2::100"}
    assert set(t.laddrs) == {"198.18.2.100", "2001:2:0:2::100"}


def test_an_ipv6_election_advertises_the_ipv6_vips_and_the_ipv4_ones_move_with_it():
    cfg = parse(doc(V4, V6, vrrp={"primary_address": "fe80::11"}), "a.toml")
    assert cfg.ha.vrrp.addresses == ("2001:2::100",)
    assert cfg.ha.vrrp.family == 6
    assert set(takeover_config(cfg).vips) == {"198.18.0.100", "2001:2::100"}


def test_an_election_with_no_vip_of_its_family_is_refused_naming_primary_address():
    with pytest.raises(ConfigError) as e:
        parse(doc(V6, vrrp={"primary_address": "198.18.0.11"}), "a.toml")
    assert str(e.value) == ("a.toml: vrrp.primary_address: 198.18.0.11 is IPv4, and the VIPs the "
                            "election advertises are not (e.g. 2001:2::100): one VRRP instance "
                            "advertises one family")


def test_one_service_still_takes_one_family():
    mixed = dict(V4, laddrs=["198.18.2.100", "2001:2:0:2::100"])
    with pytest.raises(ConfigError, match=r"services\[0\]\.laddrs\[1\]: 2001:2:0:2::100 is IPv6"):
        parse(doc(mixed), "a.toml")


def test_takeover_adds_and_announces_both_families_on_both_segments():
    k = FakeKernel()
    t = Takeover(takeover_config(parse(doc(V4, V6), "a.toml")), k)
    asyncio.run(t.acquire())
    assert {"198.18.0.100", "2001:2::100"} <= set(k.addresses["front"])
    assert {"198.18.2.100", "2001:2:0:2::100"} <= set(k.addresses["back"])
    asyncio.run(t.announce())
    rounds = collections.Counter(k.announced)
    assert rounds == {("front", ("198.18.0.100", "2001:2::100")): 3,
                      ("back", ("198.18.2.100", "2001:2:0:2::100")): 3}
    asyncio.run(t.release())
    assert not set(k.addresses["front"]) & {"198.18.0.100", "2001:2::100"}


def test_one_engine_translates_both_families():
    eng = Engine(parse(doc(V4, V6), "a.toml"), now=0.0)
    out4 = IP(eng.handle(bytes(IP(src="198.18.1.10", dst="198.18.0.100") / TCP(sport=40000, dport=80, flags="S")), 0.0))
    out6 = IPv6(eng.handle(bytes(IPv6(src="2001:2:0:1::10", dst="2001:2::100") / TCP(sport=40000, dport=80, flags="S")), 0.0))
    assert (out4.src, out4.dst, out4[TCP].dport) == ("198.18.2.100", "198.18.2.21", 8080)
    assert (out6.src, out6.dst, out6[TCP].dport) == ("2001:2:0:2::100", "2001:2:0:2::21", 8080)
    assert len(eng.table) == 2


async def test_an_ipv6_service_and_real_server_are_addressed_as_bracketed_addr_port():
    """POST /services/tcp/[2001:2::100]:80/real_servers/[2001:2:0:2::21]:8080/drain: the
    service part was matched against the service's name as written (tcp/2001:2::100:80),
    so the bracketed form every other address of the API takes answered 404."""
    from aiohttp.test_utils import TestClient, TestServer

    from director.api import make_app
    from director.control import Control
    from director.status import NodeParts

    eng = Engine(parse(doc(V4, V6), "a.toml"), now=0.0)
    node = NodeParts("t", "master", control=Control(eng), api_token="unit-test-token")
    auth = {"Authorization": "Bearer unit-test-token"}
    async with TestClient(TestServer(make_app(eng, node, clock=lambda: 0.0))) as client:
        for svc in ("tcp/[2001:2::100]:80", "tcp/2001:2::100:80"):
            rs = f"/services/{svc}/real_servers/[2001:2:0:2::21]:8080"
            resp = await client.post(rs + "/drain", headers=auth)
            assert resp.status == 200, await resp.text()
            assert (await client.delete(rs + "/override", headers=auth)).status == 200
        resp = await client.post("/services/tcp/[2001:2::999]:80/real_servers/[2001:2:0:2::21]:8080/drain",
                                 headers=auth)
        assert resp.status == 404
        resp = await client.post("/services/tcp/[nope]:80/real_servers/[2001:2:0:2::21]:8080/drain",
                                 headers=auth)
        assert resp.status == 400
