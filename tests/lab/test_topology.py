"""The lab topology itself (no node): reachability, echo servers, idempotent up, clean down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lab import nsutil, state, topology
from lab.testing import REPO_ROOT, client_env, require_lab, run_in

pytestmark = pytest.mark.lab

CLIENT_NS_ROLE = "client"


def _ns(info, role):
    return f"{info['prefix']}-{role}"


def test_description(lab_env):
    info = lab_env
    assert info["vip"] == "198.18.0.100"
    # issue 14: beside VIP:80, VIP:81 (proxy-v2) and VIP:82 (proxy-v1) to the PROXY echo port
    assert info["services"] == [
        {"proto": "tcp", "port": 80, "rs_port": 8080, "client_address": "none"},
        {"proto": "udp", "port": 80, "rs_port": 8080, "client_address": "none"},
        {"proto": "tcp", "port": 81, "rs_port": 8081, "client_address": "proxy-v2"},
        {"proto": "tcp", "port": 82, "rs_port": 8081, "client_address": "proxy-v1"},
    ]
    assert info["client"] == {"ns": _ns(info, "client"), "addr": "198.18.1.10", "gateway": "198.18.1.1"}
    assert [d["api"] for d in info["directors"]] == [
        "http://198.18.0.11:9100",
        "http://198.18.0.12:9100",
    ]
    assert [(r["name"], r["addr"], r["port"]) for r in info["real_servers"]] == [
        ("rs1", "198.18.2.21", 8080),
        ("rs2", "198.18.2.22", 8080),
        ("rs3", "198.18.2.23", 8080),
    ]
    assert info["laddrs"] == ["198.18.2.100", "198.18.2.101"]
    assert set(topology.namespaces(info["prefix"])) <= set(nsutil.list_netns())


def test_client_reaches_router_and_directors(lab_env):
    hosts = ["198.18.1.1", "198.18.0.1", "198.18.0.11", "198.18.0.12"]
    args = ["tcp-probe", "--port", "9", "--timeout", "1", "--deadline", "10"]
    for h in hosts:
        args += ["--host", h]
    out = run_in(lab_env["client"]["ns"], *args, timeout=20)
    # nothing listens on port 9: a RST (refused) proves the path both ways
    assert out["results"] == {h: "refused" for h in hosts}, out


def test_back_segment_not_routed_from_client(lab_env):
    out = run_in(
        lab_env["client"]["ns"], "tcp-probe", "--host", "198.18.2.21", "--port", "8080",
        "--timeout", "0.5", "--deadline", "5", timeout=15,
    )
    assert out["reachable"] == {"198.18.2.21": False}, out


@pytest.mark.parametrize("director", ["a", "b"])
def test_director_reaches_each_real_server(lab_env, director):
    d = next(x for x in lab_env["directors"] if x["name"] == director)
    for rs in lab_env["real_servers"]:
        out = run_in(
            d["ns"], "tcp-whoami", "--host", rs["addr"], "--port", rs["port"], "--count", 3,
            "--timeout", "2", "--deadline", "10", timeout=20,
        )
        assert out["ok"] == 3 and out["failed"] == 0, out
        assert out["by_server"] == {rs["name"]: 3}, out
        assert out["peers"] == {rs["name"]: [d["back_addr"]]}, out
    rs = lab_env["real_servers"][0]
    out = run_in(
        d["ns"], "udp-whoami", "--host", rs["addr"], "--port", rs["port"], "--count", 5,
        "--timeout", "1", "--deadline", "10", timeout=20,
    )
    assert out["ok"] == 5 and out["lost"] == 0, out
    assert out["peers"] == {rs["name"]: [d["back_addr"]]}, out
    assert out["distinct_source_ports"] == 5, out


def test_echo_bulk_and_hold(lab_env):
    a = lab_env["directors"][0]
    rs = lab_env["real_servers"][1]
    for extra in ([], ["--newlines"]):
        out = run_in(
            a["ns"], "bulk", "--host", rs["addr"], "--port", rs["port"], "--bytes", 3_000_000,
            "--timeout", "5", "--deadline", "20", *extra, timeout=30,
        )
        assert out["sha256_ok"] and out["received"] == 3_000_000, out
    out = run_in(
        a["ns"], "hold", "--host", rs["addr"], "--port", rs["port"], "--conns", 50,
        "--seconds", "1", "--interval", "0.05", "--timeout", "3", timeout=30,
    )
    assert out["connected"] == 50 and out["ok"] == 50, out
    assert out["reset"] == out["stalled"] == out["mismatch"] == 0, out
    assert out["echoes"] >= 50 * 10, out


def test_addresses_and_sysctls(lab_env):
    p = lab_env["prefix"]
    a, b = f"{p}-a", f"{p}-b"
    from pyroute2 import IPRoute

    def addrs(ns, ifname):
        with IPRoute(netns=ns, flags=0) as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            return {(x.get("address"), x["prefixlen"]) for x in ipr.get_addr(index=idx)}

    assert ("198.18.0.100", 32) in addrs(a, "front")
    assert {("198.18.2.100", 32), ("198.18.2.101", 32)} <= addrs(a, "back")
    assert addrs(b, "front") == {("198.18.0.12", 24)}
    assert addrs(b, "back") == {("198.18.2.12", 24)}

    with IPRoute(netns=f"{p}-sw", flags=0) as ipr:
        names = {link.get("ifname") for link in ipr.get_links()}
        bridges = {link.get("ifname") for link in ipr.get_links() if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "bridge"}
    assert bridges == {"br-front", "br-back"}
    assert not any(addrs(f"{p}-sw", n) for n in names if n != "lo")

    sw = nsutil.get_sysctls(f"{p}-sw", [f"net.bridge.bridge-nf-call-{t}" for t in ("iptables", "ip6tables", "arptables")])
    assert all(v in (None, "0") for v in sw.values()), sw
    for ns in (a, b):
        v = nsutil.get_sysctls(ns, [
            "net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.front.rp_filter",
            "net.ipv4.conf.back.rp_filter", "net.ipv4.conf.all.accept_local",
            "net.ipv4.conf.back.accept_local", "net.ipv4.conf.all.arp_ignore",
            "net.ipv4.conf.all.arp_announce",
        ])
        assert v == {
            "net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.front.rp_filter": "0", "net.ipv4.conf.back.rp_filter": "0",
            "net.ipv4.conf.all.accept_local": "1", "net.ipv4.conf.back.accept_local": "1",
            "net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2",
        }, (ns, v)
    r = nsutil.get_sysctls(f"{p}-router", ["net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter"])
    assert r == {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0"}


def test_node_config_written(lab_env):
    path = lab_env["directors"][0]["config"]
    with open(path, "rb") as fh:
        cfg = tomllib.load(fh)
    node = dict(cfg["node"])
    # the override state file lives in the lab's own directory, removed by lab down
    state_dir = node.pop("state_dir")
    assert state_dir.startswith(lab_env["state_dir"] + "/"), (state_dir, lab_env["state_dir"])
    assert node == {"name": "a", "api": "198.18.0.11:9100", "queue": 0,
                    "api_token": nsutil.LAB_API_TOKEN}
    # the description says it (issue 17, item 4)
    assert lab_env["api_token"] == nsutil.LAB_API_TOKEN
    assert [(s["proto"], s["port"], s.get("client_address")) for s in cfg["services"]] == [
        ("tcp", 80, None), ("udp", 80, None), ("tcp", 81, "proxy-v2"), ("tcp", 82, "proxy-v1")]
    for s in cfg["services"]:
        assert s["vip"] == "198.18.0.100"
        assert s["laddrs"] == ["198.18.2.100", "198.18.2.101"]
        assert [r["addr"] for r in s["real_servers"]] == ["198.18.2.21", "198.18.2.22", "198.18.2.23"]
    assert cfg["timeouts"]["udp"] == 300


def test_config_overrides():
    cfg = topology.node_config("a", scheduler="rr", timeouts={"udp": 2, "tcp_established": 5})
    text = topology.dump_toml(cfg)
    back = tomllib.loads(text)
    assert back["timeouts"]["udp"] == 2 and back["timeouts"]["tcp_close"] == 10
    assert back["services"][1]["scheduler"] == "rr"


def test_garbage_tool(lab_env):
    out = run_in(
        lab_env["client"]["ns"], "garbage", "--target", lab_env["vip"], "--count", 3,
        "--deadline", "10", timeout=20,
    )
    assert out["sent"]["bad_tcp_csum"] == 3 and out["sent"]["bad_udp_csum"] == 3, out
    assert out["total_sent"] > 0
    refused = run_in(lab_env["client"]["ns"], "garbage", "--target", "192.0.2.1", check=False)
    assert "error" in refused


def test_up_twice_then_down():
    require_lab()
    prefix = "tlabx"
    try:
        first = topology.up(prefix, node=False)
        pids_first = [p["pid"] for p in first["processes"]]
        recs_first = state.load_state(prefix)["processes"]
        second = topology.up(prefix, node=False)
        recs_second = state.load_state(prefix)["processes"]
        assert second["vip"] == first["vip"]
        # the first lab's processes were stopped by the second up
        assert not any(state.process_matches(r) for r in recs_first), pids_first
        assert all(state.process_matches(r) for r in recs_second)
        # and the new lab works
        out = run_in(
            f"{prefix}-a", "tcp-whoami", "--host", "198.18.2.23", "--port", 8080, "--count", 1,
            timeout=20,
        )
        assert out["by_server"] == {"rs3": 1}, out
    finally:
        result = topology.down(prefix)
    assert result["errors"] == [], result
    assert not [n for n in nsutil.list_netns() if n.startswith(f"{prefix}-")]
    assert not any(state.process_matches(r) for r in recs_second)
    assert not os.path.exists(state.state_path(prefix))
    # down again (nothing there) is harmless
    assert topology.down(prefix)["errors"] == []


def test_down_half_built_lab():
    require_lab()
    from pyroute2 import netns

    prefix = "tlabh"
    topology.down(prefix)
    netns.create(f"{prefix}-sw")
    netns.create(f"{prefix}-rs2")
    state.save_state(prefix, {"namespaces": [f"{prefix}-sw"], "processes": [{"name": "x", "pid": 999999999}, "junk"]})
    result = topology.down(prefix)
    assert result["errors"] == [], result
    assert not [n for n in nsutil.list_netns() if n.startswith(f"{prefix}-")]
    assert state.load_state(prefix) is None


def test_echo_line_handling():
    from lab.echo import MAX_PARTIAL, process_buffer

    who = b"rs9 198.18.2.11:4000\n"
    buf = bytearray(b"hello\nWHOAMI\r\nWHOAMI\nWHO")
    out, cont = process_buffer(buf, False, who)
    assert out == b"hello\n" + who + who and bytes(buf) == b"WHO" and not cont
    # an over-long partial line is echoed as it is; its tail is echoed even if it reads WHOAMI
    buf = bytearray(b"x" * (MAX_PARTIAL + 1))
    out, cont = process_buffer(buf, False, who)
    assert out == b"x" * (MAX_PARTIAL + 1) and not buf and cont
    buf += b"WHOAMI\nWHOAMI\n"
    out, cont = process_buffer(buf, cont, who)
    assert out == b"WHOAMI\n" + who and not cont


def test_udp_whoami_forms(lab_env):
    import socket

    rs = lab_env["real_servers"][2]
    a = lab_env["directors"][0]

    def exchange(payload):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            s.sendto(payload, (rs["addr"], rs["port"]))
            data, _ = s.recvfrom(2048)
            return data, s.getsockname()[1]

    for payload in (b"WHOAMI", b"WHOAMI\n"):
        data, port = nsutil.in_netns(a["ns"], exchange, payload)
        assert data == f"{rs['name']} {a['back_addr']}:{port}".encode()
    data, _ = nsutil.in_netns(a["ns"], exchange, b"some bytes\x00\n")
    assert data == b"some bytes\x00\n"


# --- the pair through the `tandem lab` command line ------------------------------------------

PAIR = "tlabp"


def _tandem(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "tandem"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "tandem.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout,
                          env=client_env())


@pytest.fixture(scope="module")
def pair_cli():
    """The pair brought up by `tandem lab up --json`, taken down by `tandem lab down`."""
    require_lab()
    cp = _tandem("lab", "up", "--prefix", PAIR, "--json")
    try:
        assert cp.returncode == 0, cp.stderr
        yield json.loads(cp.stdout)
    finally:
        _tandem("lab", "down", "--prefix", PAIR)


def _doc_change_requests() -> list[str]:
    """The curl lines of docs/operations.md's "Change a running node" block."""
    text = (REPO_ROOT / "docs" / "operations.md").read_text()
    block = text.split("## Change a running node", 1)[1].split("```", 2)[1]
    lines, cur = [], ""
    for ln in block.splitlines():
        cur += ln.rstrip("\\").strip() + " " if ln.strip() else ""
        if ln.strip() and not ln.rstrip().endswith("\\"):
            lines.append(cur.split("#")[0].strip())
            cur = ""
    return [ln for ln in lines if ln.startswith("curl")]


def test_lab_up_gives_the_pair_an_api_token_the_docs_requests_use(pair_cli):
    """Issue 17, item 4: `tandem lab up` configured no API token, so every change request of
    docs/operations.md answered 401 in the lab. The lab's nodes now carry one, `lab up
    --json` says it as `api_token`, and the documented requests, run as written with
    T set to it, change the node (weight, drain, reload; resign would hand the pair over)."""
    token = pair_cli["api_token"]
    assert token
    a = next(d for d in pair_cli["directors"] if d["name"] == "a")
    for d in pair_cli["directors"]:
        with open(d["config"], "rb") as fh:
            assert tomllib.load(fh)["node"]["api_token"] == token
    requests = [r for r in _doc_change_requests() if "/resign" not in r]
    assert any("/weight" in r for r in requests) and any("/drain" in r for r in requests), requests
    host = a["api"].removeprefix("http://")
    for req in requests:
        cmd = req.replace("NODE:9100", host).replace("curl ", "curl -sS -w '\\n%{http_code}' ", 1)
        cp = subprocess.run(["ip", "netns", "exec", pair_cli["client"]["ns"], "bash", "-c", cmd],
                            capture_output=True, text=True, timeout=30, env={**client_env(), "T": token})
        assert cp.stdout.strip().splitlines()[-1] == "200", (cmd, cp.stdout, cp.stderr)
    # and without it, the same request is refused
    cp = subprocess.run(["ip", "netns", "exec", pair_cli["client"]["ns"], "bash", "-c",
                         requests[0].replace("NODE:9100", host).replace(
                             "curl ", "curl -sS -o /dev/null -w '%{http_code}' ", 1)],
                        capture_output=True, text=True, timeout=30, env={**client_env(), "T": "wrong"})
    assert cp.stdout.strip() == "401", cp.stdout
    summary = _tandem("lab", "status", "--prefix", PAIR, "--json")
    assert json.loads(summary.stdout)["info"]["api_token"] == token


def test_lab_status_is_up_again_after_kill_and_restore(pair_cli):
    """Issue 17, item 7: after `lab fault a kill` and `lab fault a restore` the state kept the
    killed node's PID, so `tandem lab status` said DEGRADED (and exited 1) for good while
    both nodes ran. It now lists what runs: up, exit 0, one node-a, alive, and each node's
    role; while a is killed it says DEGRADED and exits 1, as it should."""
    for fault, want_rc, want in (("kill", 1, "DEGRADED"), ("restore", 0, "up")):
        cp = _tandem("lab", "fault", "--prefix", PAIR, "a", fault)
        assert cp.returncode == 0, cp.stderr
        if fault == "restore":
            topology.wait_role(PAIR, "a", "master", 20)
        cp = _tandem("lab", "status", "--prefix", PAIR)
        assert cp.returncode == want_rc, cp.stdout + cp.stderr
        assert cp.stdout.startswith(f"lab {PAIR!r}: {want};"), cp.stdout
    assert "DEAD" not in cp.stdout, cp.stdout
    st_ = json.loads(_tandem("lab", "status", "--prefix", PAIR, "--json").stdout)
    nodes = [p for p in st_["processes"] if p["name"].startswith("node-")]
    assert sorted(p["name"] for p in nodes) == ["node-a", "node-b"], nodes
    assert all(p["alive"] for p in st_["processes"]), st_["processes"]
    assert {p["name"]: p["role"] for p in nodes} == {"node-a": "master", "node-b": "backup"}, nodes


def test_last_a_graceful_stop_and_lab_down_keeping_the_logs(pair_cli, tmp_path):
    """Issue 17, item 14 (runs last: it takes the module's pair down). A graceful stop of the
    master logged "N connections dropped with it" while its peer, synced, carried them on;
    and `tandem lab down` deleted the logs that said so, with no way to keep them. Now a's
    stop line says its connections were synced to peer b, and `lab down --keep-logs DIR`
    copies every log there after the processes have stopped (b's own stop line is in)."""
    client = pair_cli["client"]["ns"]
    res = run_in(client, "tcp-whoami", "--host", topology.VIP, "--port", topology.SERVICE_PORT,
                 "--count", 20, timeout=60)
    assert res["ok"] == 20, res
    cp = _tandem("lab", "fault", "--prefix", PAIR, "a", "stop")
    assert cp.returncode == 0, cp.stderr
    topology.wait_role(PAIR, "b", "master", 20)
    kept = tmp_path / "kept"
    cp = _tandem("lab", "down", "--prefix", PAIR, "--keep-logs", str(kept))
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert f"logs kept in {kept}: a.log b.log rs1.log rs2.log rs3.log" in cp.stdout, cp.stdout
    assert not state.state_dir(PAIR).exists()
    assert not set(topology.namespaces(PAIR)) & set(nsutil.list_netns())
    a_stop = [ln for ln in (kept / "a.log").read_text().splitlines() if "node a: stopped" in ln]
    assert len(a_stop) == 1, a_stop
    assert "connections were synced to peer b (last heard" in a_stop[0], a_stop
    assert "dropped" not in a_stop[0] and "its 0 connections" not in a_stop[0], a_stop
    b_log = (kept / "b.log").read_text()
    assert "Entering MASTER STATE" in b_log and "node b: stopped" in b_log, b_log[-2000:]
    assert "listening" in (kept / "rs1.log").read_text()
