"""Real servers learn the client from tandem's PROXY header (issue 14): Debian's nginx
(`listen ... proxy_protocol`, access log `$proxy_protocol_addr:$proxy_protocol_port`) and
HAProxy (`bind ... accept-proxy`, TCP mode, log `%ci:%cp`) in every real server's
namespace (lab.proxy_servers), behind services of their own on VIP ports 83..86 (v2 and
v1 for each server).  300 connections through the VIP per service: the servers' logs
name, for every one of them, the client namespace's address and the very port its
socket had, whichever real server took it."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from lab import proxy_servers, state as st
from lab.nodeconf import node_config
from lab.plan import CLIENT_ADDR, REAL_SERVERS
from lab.testing import REPO_ROOT, client_env, lab_session, require_lab

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


@pytest.fixture(scope="module")
def lab():
    require_lab()
    services = node_config("a", scheduler="rr")["services"] + proxy_servers.services()
    with lab_session(PREFIX, node=True, scheduler="rr", config_extra={"services": services}) as info:
        procs = proxy_servers.start(PREFIX, st.state_dir(PREFIX) / "proxy-servers")
        try:
            yield info, procs
        finally:
            proxy_servers.stop(procs)


def requests(lab, port: int, request: str) -> list[int]:
    argv = ["ip", "netns", "exec", lab["client"]["ns"], sys.executable, "-c", _CLIENT,
            lab["vip"], str(port), str(COUNT), request]
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
def test_300_requests_show_the_clients_address_and_port_in_the_servers_log(lab, port):
    info, procs = lab
    server, mode = proxy_servers.VIP_PORTS[port]
    request = "GET / HTTP/1.0\\r\\n\\r\\n" if server == "nginx" else "WHOAMI\\n"
    before = counts(procs, server)
    ports = requests(info, port, request)
    lines = logged_since(procs, server, before, COUNT)
    assert sorted(lines) == sorted(f"{CLIENT_ADDR}:{p}" for p in ports), (mode, lines[:5])
    # rr spread them over every real server's instance
    after = counts(procs, server)
    assert len(after) == len(REAL_SERVERS) and all(after[k] > before[k] for k in after), after
