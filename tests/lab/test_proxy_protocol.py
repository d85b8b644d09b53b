"""PROXY protocol services in the lab (issue 14): real servers learn the client's address.

The lab serves VIP:81 with a PROXY v2 header and VIP:82 with v1, to the echo servers' PROXY
port; their WHOAMI answer names the address and port the header gave.  Each client
connection compares that with its own socket's address and port."""
from __future__ import annotations

import json

import pytest

from lab.nsutil import http_get
from lab.testing import lab_session, require_lab, run_in

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab():
    require_lab()
    with lab_session("tpx", node=True, scheduler="rr") as info:
        yield info


def engine_stats(lab) -> dict:
    a = lab["directors"][0]
    host, port = a["api"].removeprefix("http://").split(":")
    code, body = http_get(a["ns"], host, int(port), "/status", timeout=3.0)
    assert code == 200
    return json.loads(body)["engine"]


def test_the_description_lists_each_services_client_address(lab):
    modes = {(s["proto"], s["port"]): s["client_address"] for s in lab["services"]}
    assert modes == {("tcp", 80): "none", ("udp", 80): "none",
                     ("tcp", 81): "proxy-v2", ("tcp", 82): "proxy-v1"}


@pytest.mark.parametrize("port", [81, 82])
def test_50_connections_each_see_their_own_client_address_and_port(lab, port):
    before = engine_stats(lab).get("proxy_headers", 0)
    r = run_in(lab["client"]["ns"], "tcp-whoami", "--host", lab["vip"], "--port", port,
               "--count", 50, "--concurrency", 10, timeout=120)
    assert r["ok"] == 50 and r["failed"] == 0, r
    # every answer names the very connection that asked: the client's address and port
    assert r["own_address_seen"] == 50, r
    assert {ip for peers in r["peers"].values() for ip in peers} == {lab["client"]["addr"]}
    assert sorted(r["by_server"]) == ["rs1", "rs2", "rs3"]
    assert engine_stats(lab)["proxy_headers"] - before == 50


def test_the_plain_service_still_shows_a_laddr(lab):
    r = run_in(lab["client"]["ns"], "tcp-whoami", "--host", lab["vip"], "--port", 80,
               "--count", 10, timeout=60)
    assert r["ok"] == 10 and r["own_address_seen"] == 0, r
    assert {ip for peers in r["peers"].values() for ip in peers} <= set(lab["laddrs"])


def test_20mb_through_the_proxy_v2_service_arrives_intact(lab):
    """Every later segment shifted, every ack and SACK edge shifted back (Linux sends
    timestamps and SACK), over thousands of segments: the echo returns every byte."""
    r = run_in(lab["client"]["ns"], "bulk", "--host", lab["vip"], "--port", 81,
               "--bytes", 20_000_000, timeout=300)
    assert r["sent"] == r["received"] == 20_000_000 and r["sha256_ok"], r
