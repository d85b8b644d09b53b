"""PROXY protocol services in the lab (issue 14): real servers learn the client's address.

The lab serves VIP:81 with a PROXY v2 header and VIP:82 with v1, to the echo servers' PROXY
port; their WHOAMI answer names the address and port the header gave.  Each client
connection compares that with its own socket's address and port."""
from __future__ import annotations

import json

import pytest

from lab.nodeconf import node_config
from lab.nsutil import http_get
from lab.plan import LADDRS, REAL_SERVERS, RS_PORT, VIP
from lab.testing import lab_session, require_lab, run_in

pytestmark = pytest.mark.lab


#: a TOA service (client_address = "toa") beside the lab's own, to one real server's plain
#: echo port, so one capture in that server's namespace sees every connection
TOA_PORT = 87


def _toa_service() -> dict:
    return {"proto": "tcp", "vip": VIP, "port": TOA_PORT, "scheduler": "rr",
            "laddrs": list(LADDRS), "client_address": "toa",
            "real_servers": [{"addr": REAL_SERVERS[0]["addr"], "port": RS_PORT}]}


@pytest.fixture(scope="module")
def lab():
    require_lab()
    services = node_config("a", scheduler="rr")["services"] + [_toa_service()]
    with lab_session("tpx", node=True, scheduler="rr", config_extra={"services": services}) as info:
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


_OWN_HEADER_CLIENT = r"""
import json, socket, sys
from proto import proxy
s = socket.create_connection((sys.argv[1], 81), timeout=5)
s.sendall(proxy.encode(1, "203.0.113.9", sys.argv[1], 5555, 81) + b"WHOAMI\n")
s.settimeout(2.0)
try:
    got = s.recv(4096)
except socket.timeout:
    got = None
print(json.dumps({"got": None if got is None else got.decode(errors="replace")}))
"""


def test_a_client_with_its_own_header_is_refused_not_given_a_second(lab):
    """client_proxy_header = "refuse" (the default, VIP:81): a client that opens with a
    PROXY header of its own gets nothing through (the echo would answer WHOAMI with the
    address its header claims, or with ours in front of it)."""
    import subprocess
    import sys
    from lab.testing import REPO_ROOT, client_env
    before = engine_stats(lab)
    cp = subprocess.run(["ip", "netns", "exec", lab["client"]["ns"], sys.executable, "-c",
                         _OWN_HEADER_CLIENT, lab["vip"]], cwd=str(REPO_ROOT), env=client_env(),
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert json.loads(cp.stdout.splitlines()[-1]) == {"got": None}
    after = engine_stats(lab)
    assert after["proxy_headers_refused"] - before["proxy_headers_refused"] == 1
    assert after["proxy_headers"] == before["proxy_headers"]


def test_toa_50_connections_each_name_their_client_on_the_servers_wire(lab):
    """client_address = "toa" (VIP:87 to rs1's plain echo): Linux has no TOA module, so a
    packet socket in rs1's namespace reads the option where the module would, in the
    segment that completes each connection's handshake there.  For 50 connections the
    option names the client namespace's address and that very connection's port (the
    echo's WHOAMI answer gives the laddr:lport rs1 saw, which keys the capture)."""
    from lab import toa_capture
    from lab.testing import REPO_ROOT, client_env
    rs, count = lab["real_servers"][0], 50
    before = engine_stats(lab)
    seen, flows = toa_capture.through(lab["client"]["ns"], lab["vip"], TOA_PORT, rs["ns"],
                                      rs["addr"], RS_PORT, count, str(REPO_ROOT), client_env())
    assert len(seen) == count and None not in seen.values(), seen
    client = lab["client"]["addr"]
    # each connection's handshake-completing segment at rs1 names its own client and port
    learnt = {cport: flows[peer]["toa"] for cport, peer in seen.items()}
    assert learnt == {cport: [client, cport] for cport in seen}
    assert not any(f["syn_toa"] for f in flows.values())        # never on a SYN
    after = engine_stats(lab)
    assert after["toa_inserted"] - before["toa_inserted"] >= count
    assert after["toa_no_room"] == before["toa_no_room"]
