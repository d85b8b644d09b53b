"""Operator overrides in the pair lab, through the nodes' HTTP API and `tandem ipvsadm`.

A weight or drain set through one node's API is the pair's (carried to the peer on the
authenticated sync channel), survives a restart (the node's state file), beats the config
file until cleared (DELETE .../override), and is logged once where it was made and once
where it was applied.  Before, a drain lived in one node's memory: after a failover the new
master scheduled the drained server again.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab import faults
from lab import state as st
from lab import topology as T
from lab.nsutil import in_netns
from lab.plan import API_TOKEN
from lab.procs import wait_role as _wait_role
from lab.testing import REPO_ROOT, client_env, lab_session, require_lab, run_in

pytestmark = pytest.mark.lab
PREFIX = "tov"
SVC = f"tcp/{T.VIP}:80"
ADDR = {r["name"]: r["addr"] for r in T.REAL_SERVERS}
FRONT = {"a": "198.18.0.11", "b": "198.18.0.12"}


@pytest.fixture(scope="module")
def pair():
    require_lab()
    with lab_session(PREFIX, node=True, ha=True) as info:
        yield info


def api(node: str, path: str, method: str = "GET", body: dict | None = None,
        token: str | None = API_TOKEN):
    """A request to director `node`'s API from inside its namespace: (status, parsed body)."""
    def go():
        req = urllib.request.Request(f"http://{FRONT[node]}:{T.API_PORT}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        if token and method != "GET":
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
    return in_netns(T.ns_name(PREFIX, node), go, timeout=15)


def rs_path(name: str, what: str) -> str:
    return f"/services/tcp%2F{T.VIP}%3A80/real_servers/{ADDR[name]}:{T.RS_PORT}/{what}"


def server(node: str, name: str) -> dict:
    code, body = api(node, "/services")
    assert code == 200, body
    svc = next(s for s in body["services"] if s["name"] == SVC)
    return next(r for r in svc["real_servers"] if r["addr"] == ADDR[name])


def wait_for(what, timeout: float = 5.0):
    """Poll (bounded) until what() is truthy; returns its value."""
    end = time.monotonic() + timeout
    while True:
        v = what()
        if v or time.monotonic() > end:
            return v
        time.sleep(0.05)


def served(count: int = 60) -> dict:
    r = run_in(T.ns_name(PREFIX, "client"), "tcp-whoami", "--host", T.VIP, "--port", 80,
               "--count", count)
    assert r["ok"] == count, r
    return r["by_server"]


def log_lines(node: str, pattern: str) -> list[str]:
    text = (st.state_dir(PREFIX) / f"{node}.log").read_text(errors="replace")
    return [ln for ln in text.splitlines() if re.search(pattern, ln)]


def wait_role(prefix: str, name: str, role: str, wait: float) -> None:
    """lab.procs.wait_role, with the node's log tail when it times out."""
    try:
        _wait_role(prefix, name, role, wait)
    except TimeoutError as exc:
        tail = (st.state_dir(prefix) / f"{name}.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"{exc}\n--- {name}.log ---\n{tail}") from None


def ensure_pair() -> None:
    """a master, b backup (a test that failed midway may have left a killed node)."""
    for name in ("a", "b"):
        try:
            T.node_status(PREFIX, name)
        except Exception:       # noqa: BLE001 - not running
            faults.fault(PREFIX, name, "restore")
    wait_role(PREFIX, "a", "master", 30)
    wait_role(PREFIX, "b", "backup", 30)
    for name in ADDR:           # and no override left from a test that failed midway
        api("a", rs_path(name, "override"), "DELETE")
    for name in ADDR:
        assert wait_for(lambda: server("b", name)["override"] is None)


def test_a_drain_on_the_master_holds_on_the_new_master_after_a_failover(pair):
    """The done-when of issue 17: drain rs2 on the master, kill the master, and no new
    connection reaches rs2 through the new master; cleared on the new master, the old one
    (restored) follows too."""
    ensure_pair()
    assert {"rs1", "rs2", "rs3"} <= set(served())          # every server takes connections
    code, body = api("a", rs_path("rs2", "drain"), "POST")
    assert code == 200 and body["override"]["drain"] is True and body["override"]["by"] == "a", body
    # on the peer within the sync round trip, without any request to it
    peer = wait_for(lambda: server("b", "rs2")["override"])
    assert peer == {**body["override"]} and server("b", "rs2")["weight"] == 0, peer
    assert "rs2" not in served()
    faults.fault(PREFIX, "a", "kill")
    wait_role(PREFIX, "b", "master", 30)
    # (wlc on b would favour rs2 without the drain: the connections a stopped sending it
    # are the ones b does not hold, so rs2 has the fewest)
    r = server("b", "rs2")
    assert (r["weight"], r["scheduled"], r["override"]["drain"]) == (0, False, True), r
    by = served()
    assert "rs2" not in by, by
    # logged once where made, once where applied
    real = re.escape(f"{ADDR['rs2']}:{T.RS_PORT} in {SVC}")
    assert len(log_lines("a", rf"operator: drain of {real} on a")) == 1
    assert len(log_lines("b", rf"peer a: drain of {real} applied here on b")) == 1
    # clear it on the new master; the restored old master follows (its state file
    # still says drain: the newer clear from b wins)
    code, body = api("b", rs_path("rs2", "override"), "DELETE")
    assert code == 200 and body["cleared"] is True and body["override"] is None, body
    assert server("b", "rs2")["weight"] == 1
    faults.fault(PREFIX, "a", "restore")
    wait_role(PREFIX, "a", "master", 30)
    assert wait_for(lambda: server("a", "rs2")["override"] is None)
    assert server("a", "rs2")["weight"] == 1
    assert "rs2" in served()


def test_an_override_survives_a_restart_with_the_peer_down_and_reaches_the_peer_later(pair):
    """Only the state file can bring it back: b is down while a restarts."""
    ensure_pair()
    faults.fault(PREFIX, "b", "kill")
    code, body = api("a", rs_path("rs1", "weight"), "POST", {"weight": 0})
    assert code == 200 and body["override"]["weight"] == 0 and body["override"]["drain"] is False
    faults.fault(PREFIX, "a", "kill")
    faults.fault(PREFIX, "a", "restore")
    wait_role(PREFIX, "a", "master", 30)
    r = server("a", "rs1")
    assert r["override"] is not None and r["override"]["weight"] == 0 and r["weight"] == 0, r
    assert "rs1" not in served()
    faults.fault(PREFIX, "b", "restore")
    wait_role(PREFIX, "b", "backup", 30)
    assert wait_for(lambda: server("b", "rs1")["override"]) == r["override"]
    code, body = api("a", rs_path("rs1", "override"), "DELETE")
    assert code == 200 and body["cleared"] is True
    assert wait_for(lambda: server("b", "rs1")["override"] is None)


def ipvsadm(node: str) -> str:
    argv = ["ip", "netns", "exec", T.ns_name(PREFIX, node), sys.executable, "-m", "tandem.cli",
            "ipvsadm", "-L", "-n", "--api", f"http://{FRONT[node]}:{T.API_PORT}"]
    cp = subprocess.run(argv, cwd=str(REPO_ROOT), env=client_env(), capture_output=True,
                        text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout


def test_an_override_beats_the_file_on_reload_says_so_and_clearing_it_gives_the_file_back(pair):
    ensure_pair()
    code, body = api("a", rs_path("rs3", "weight"), "POST", {"weight": 3})
    assert code == 200 and body["weight"] == 3
    path = Path(st.load_state(PREFIX)["configs"]["a"])
    original = path.read_text()
    try:
        cfg = T.node_config("a", ha=True, weights={"rs3": 2})
        cfg["node"]["state_dir"] = str(st.state_dir(PREFIX) / "a-state")
        T.write_config(path, cfg)
        code, body = api("a", "/reload", "POST")
        assert code == 200 and body["changed"], body
        r = server("a", "rs3")
        assert (r["weight"], r["config_weight"], r["override"]["weight"]) == (3, 2, 3), r
        real = re.escape(f"{ADDR['rs3']}:{T.RS_PORT} in {SVC}")
        assert log_lines("a", rf"reload: override weight 3 of {real} \(by a\) beats the file's "
                              rf"weight 2 until cleared")
        # ipvsadm -L marks it, on both nodes, after ipvsadm's own five columns
        for node, file_weight in (("a", 2), ("b", 1)):
            out = wait_for(lambda: re.search(
                rf"-> {re.escape(ADDR['rs3'])}:{T.RS_PORT} +FullNat 3 +\d+ +\d+ +"
                rf"override: weight 3 by a \(file {file_weight}\)", ipvsadm(node)))
            assert out, ipvsadm(node)
        assert not re.search(rf"{re.escape(ADDR['rs1'])}:{T.RS_PORT} .*override", ipvsadm("a"))
        code, body = api("a", rs_path("rs3", "override"), "DELETE")
        assert code == 200 and body["weight"] == 2 and body["override"] is None, body
        assert server("a", "rs3")["weight"] == 2
        assert wait_for(lambda: server("b", "rs3")["override"] is None)
        assert server("b", "rs3")["weight"] == 1            # b's own file says 1
        assert "override" not in ipvsadm("a")
    finally:
        path.write_text(original)
        api("a", "/reload", "POST")
