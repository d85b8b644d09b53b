"""Real servers learn the client from tandem's PROXY header (issue 14): Debian's nginx
(`listen ... proxy_protocol`, access log `$proxy_protocol_addr:$proxy_protocol_port`) and
HAProxy (`bind ... accept-proxy`, TCP mode, log `%ci:%cp`) in every real server's
namespace (lab.proxy_servers), behind services of their own on VIP ports 83..86 (v2 and
v1 for each server).  300 connections through the VIP per service: the servers' logs
name, for every one of them, the client namespace's address and the very port its
socket had, whichever real server took it.

The lab is dual-stack (`up --ipv6`): the same over IPv6, through VIP6's ports 83..86 (the
headers say TCP6 / AF_INET6 and name the client's IPv6 address), and the lab's echo
servers behind VIP6:81 and :82 (TCP, v2 and v1), and PROXY v2 over UDP on VIP:81 and
VIP6:81 (a header on every datagram, which the echo's WHOAMI answer repeats)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from lab import proxy_servers, state as st
from lab.nodeconf import node_config
from lab.nsutil import http_get
from lab.plan import CLIENT_ADDR, REAL_SERVERS, RS_PORT
from lab.plan6 import CLIENT6, LADDRS6, REAL_SERVER6, VIP6
from lab.testing import REPO_ROOT, client_env, lab_session, require_lab, run_in

pytestmark = pytest.mark.lab

PREFIX = "tps"
COUNT = 300

#: run in the client namespace: COUNT connections, one request each, one at a time;
#: prints the local ports used and how many got an answer
_CLIENT = r"""
import json, socket, sys
host, port, count, request = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
ports, ok = [], 0
for _ in range(count):
    s = socket.create_connection((host, port), timeout=5)
    ports.append(s.getsockname()[1])
    s.sendall(request.replace(b"\\n", b"\n").replace(b"\\r", b"\r"))
    s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    ok += bool(data)
    s.close()
print(json.dumps({"ports": ports, "ok": ok}))
"""


#: TOA over IPv6 (VIP6:87, client_address = "toa", to rs1's plain echo over IPv6)
TOA_PORT = 87
TOA6_SERVICE = {"proto": "tcp", "vip": VIP6, "port": TOA_PORT, "scheduler": "rr",
                "laddrs": list(LADDRS6), "client_address": "toa",
                "real_servers": [{"addr": REAL_SERVER6["rs1"], "port": RS_PORT}]}


@pytest.fixture(scope="module")
def lab():
    require_lab()
    services = (node_config("a", scheduler="rr", ipv6=True)["services"]
                + proxy_servers.services(ipv6=True) + [TOA6_SERVICE])
    with lab_session(PREFIX, node=True, scheduler="rr", ipv6=True,
                     config_extra={"services": services}) as info:
        procs = proxy_servers.start(PREFIX, st.state_dir(PREFIX) / "proxy-servers", ipv6=True)
        try:
            yield info, procs
        finally:
            proxy_servers.stop(procs)


def requests(lab, port: int, request: str, vip_key: str = "vip") -> list[int]:
    argv = ["ip", "netns", "exec", lab["client"]["ns"], sys.executable, "-c", _CLIENT,
            lab[vip_key], str(port), str(COUNT), request]
    cp = subprocess.run(argv, cwd=str(REPO_ROOT), env=client_env(), capture_output=True,
                        text=True, timeout=180)
    assert cp.returncode == 0, cp.stderr[-2000:]
    r = json.loads(cp.stdout.splitlines()[-1])
    assert r["ok"] == COUNT, r
    return r["ports"]


def counts(procs, server: str) -> dict[str, int]:
    return {rec["name"]: len(proxy_servers.clients_logged([rec], server))
            for rec in procs if rec["server"] == server}


def logged_since(procs, server: str, before: dict[str, int], want: int,
                 wait: float = 10.0) -> list[str]:
    """What each server of this kind logged after its own `before` count of lines."""
    end = time.monotonic() + wait
    while True:
        lines = [ln for rec in procs if rec["server"] == server
                 for ln in proxy_servers.clients_logged([rec], server)[before[rec["name"]]:]]
        if len(lines) >= want or time.monotonic() > end:
            return lines
        time.sleep(0.1)


@pytest.mark.parametrize("port", sorted(proxy_servers.VIP_PORTS))
@pytest.mark.parametrize("vip_key, client", [("vip", CLIENT_ADDR), ("vip6", CLIENT6)])
def test_300_requests_show_the_clients_address_and_port_in_the_servers_log(lab, port, vip_key, client):
    info, procs = lab
    server, mode = proxy_servers.VIP_PORTS[port]
    request = "GET / HTTP/1.0\\r\\n\\r\\n" if server == "nginx" else "WHOAMI\\n"
    before = counts(procs, server)
    ports = requests(info, port, request, vip_key)
    lines = logged_since(procs, server, before, COUNT)
    assert sorted(lines) == sorted(f"{client}:{p}" for p in ports), (mode, lines[:5])
    # rr spread them over every real server's instance
    after = counts(procs, server)
    assert len(after) == len(REAL_SERVERS) and all(after[k] > before[k] for k in after), after


def test_the_dual_stack_description_lists_vip6s_proxy_services_and_udp_on_both(lab):
    """`tandem lab up --ipv6 --json`: `services6` lists VIP6's services with their
    client_address mode, and both VIPs have PROXY v2 over UDP on port 81."""
    info, _ = lab
    modes6 = {(s["proto"], s["port"]): s["client_address"] for s in info["services6"]}
    assert modes6 == {("tcp", 80): "none", ("udp", 80): "none", ("tcp", 81): "proxy-v2",
                      ("tcp", 82): "proxy-v1", ("udp", 81): "proxy-v2"}
    modes = {(s["proto"], s["port"]): s["client_address"] for s in info["services"]}
    assert modes[("udp", 81)] == "proxy-v2"


def engine_stats(info) -> dict:
    a = info["directors"][0]
    host, port = a["api"].removeprefix("http://").split(":")
    code, body = http_get(a["ns"], host, int(port), "/status", timeout=3.0)
    assert code == 200
    return json.loads(body)["engine"]


@pytest.mark.parametrize("port", [81, 82])
def test_50_ipv6_connections_to_the_echo_each_see_their_own_client_address_and_port(lab, port):
    """VIP6:81 (v2) and :82 (v1) to the echo servers' PROXY port over IPv6: each answer
    names the very connection that asked, by its IPv6 address and port (the header said
    TCP6 / AF_INET6: the echo takes the address family the header gives)."""
    info, _ = lab
    r = run_in(info["client"]["ns"], "tcp-whoami", "--host", info["vip6"], "--port", port,
               "--count", 50, "--concurrency", 10, timeout=120)
    assert r["ok"] == 50 and r["failed"] == 0 and r["own_address_seen"] == 50, r
    assert {ip for peers in r["peers"].values() for ip in peers} == {CLIENT6}
    assert sorted(r["by_server"]) == ["rs1", "rs2", "rs3"]


@pytest.mark.parametrize("vip_key, client", [("vip", CLIENT_ADDR), ("vip6", CLIENT6)])
def test_100_udp_datagrams_each_carry_their_clients_address_and_port(lab, vip_key, client):
    """PROXY v2 over UDP (VIP:81 and VIP6:81): 100 datagrams, each from a socket and port
    of its own; the echo answers only a datagram that opens with a valid v2 header, and
    WHOAMI with the address and port that header gives, so every answer naming the
    datagram's own source proves its header; the director counted a header on each."""
    info, _ = lab
    before = engine_stats(info)["proxy_dgram_headers"]
    r = run_in(info["client"]["ns"], "udp-whoami", "--host", info[vip_key], "--port", 81,
               "--count", 100, "--concurrency", 10, timeout=120)
    assert r["ok"] == 100 and r["own_address_seen"] == 100, r
    assert r["distinct_source_ports"] == 100, r
    assert {ip for peers in r["peers"].values() for ip in peers} == {client}
    assert sorted(r["by_server"]) == ["rs1", "rs2", "rs3"]
    assert engine_stats(info)["proxy_dgram_headers"] - before == 100


def test_toa_over_ipv6_50_connections_each_name_their_client_on_the_servers_wire(lab):
    """client_address = "toa" on VIP6:87 (to rs1's echo over IPv6): the 20-byte form (kind
    254, port, IPv6 address) read from the wire in rs1's namespace, in the segment that
    completes each connection's handshake, names the client's IPv6 address and that
    connection's own port (lab.toa_capture stands in for the TOA module Linux lacks)."""
    from lab import toa_capture
    info, _ = lab
    rs = next(r for r in info["real_servers"] if r["name"] == "rs1")
    before = engine_stats(info)["toa_inserted"]
    seen, flows = toa_capture.through(info["client"]["ns"], info["vip6"], TOA_PORT, rs["ns"],
                                      REAL_SERVER6["rs1"], RS_PORT, 50, str(REPO_ROOT),
                                      client_env())
    assert len(seen) == 50 and None not in seen.values(), seen
    assert {cport: flows[peer]["toa"] for cport, peer in seen.items()} == \
        {cport: [CLIENT6, cport] for cport in seen}
    assert not any(f["syn_toa"] for f in flows.values())
    assert engine_stats(info)["toa_inserted"] - before >= 50
