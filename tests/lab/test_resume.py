"""The operator's resign and resume, and what each node of a running pair shows of the other,
through the nodes' HTTP APIs (issue 17, items 2 and 5)."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab import state as st
from lab import topology as T
from lab.nsutil import in_netns
from lab.testing import lab_session, require_lab

pytestmark = pytest.mark.lab
PREFIX = "trs"
TOKEN = "resume-operator-token"
ADDR = {"a": "198.18.0.11", "b": "198.18.0.12"}


@pytest.fixture(scope="module")
def pair():
    require_lab()
    with lab_session(PREFIX, node=True, ha=True, config_extra={"node": {"api_token": TOKEN}}) as info:
        yield info


def api(node: str, path: str, method: str = "GET") -> tuple[int, dict | str]:
    """A request to a node's API from inside its namespace: (status, parsed body)."""
    def go():
        req = urllib.request.Request(f"http://{ADDR[node]}:{T.API_PORT}{path}", method=method,
                                     data=b"" if method == "POST" else None)
        if method == "POST":
            req.add_header("Authorization", f"Bearer {TOKEN}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
    return in_netns(T.ns_name(PREFIX, node), go, timeout=15)


def status(node: str) -> dict:
    code, body = api(node, "/status")
    assert code == 200 and isinstance(body, dict), body
    return body


def wait_roles(a: str, b: str, what: str, timeout: float = 15.0) -> tuple[dict, dict]:
    """Until a and b have these roles and each has heard the other's current STATE
    (a bound on a hang, not a timing assertion)."""
    end = time.monotonic() + timeout
    while True:
        sa, sb = status("a"), status("b")
        pa, pb = sa.get("peer_status") or {}, sb.get("peer_status") or {}
        if (sa["role"], sb["role"]) == (a, b) and (pa.get("role"), pb.get("role")) == (b, a) \
                and pa.get("role_from") == pb.get("role_from") == "sync":
            return sa, sb
        assert time.monotonic() < end, f"{what}: a {sa['role']}, b {sb['role']}; " \
                                       f"a sees {sa.get('peer_status')}, b sees {sb.get('peer_status')}"
        time.sleep(0.1)


def node_log(node: str) -> str:
    recs = [p for p in st.load_state(PREFIX)["processes"] if p["name"] == f"node-{node}"]
    return Path(recs[-1]["log"]).read_text(errors="replace")


def test_both_nodes_show_the_peer_address_role_priority_last_advert_and_sync(pair):
    """Issue 17 item 5: on the master `peer` was always null.  Now a (master, 150) names b
    (its address, role backup, priority 100, from b's own word over sync, with the sync link's
    health) and says it has seen no advert from b, and why (a backup does not advertise); b
    (backup) names a, with a's last advert, seen at most an advert interval or so ago."""
    sa, sb = wait_roles("master", "backup", "the pair comes up")
    end = time.monotonic() + 10
    while sb["peer_status"]["last_advert"] is None:      # b's first advert from a, after its start
        assert time.monotonic() < end and sb["peer_status"]["last_advert_note"] == \
            "none received since this node started: no master heard", sb["peer_status"]
        time.sleep(0.05)
        sa, sb = status("a"), status("b")
    assert sa["peer"] == ADDR["b"] and sb["peer"] == ADDR["a"]
    pa, pb = sa["peer_status"], sb["peer_status"]
    assert (pa["address"], pa["address_from"], pa["node"], pa["role"], pa["priority"],
            pa["resigned"]) == (ADDR["b"], "sync", "b", "backup", 100, False), pa
    assert pa["last_advert"] is None and "a backup does not advertise" in pa["last_advert_note"], pa
    assert pa["sync"]["state"] == "ok" and pa["sync"]["missing"] == 0, pa
    assert (pb["address"], pb["node"], pb["role"], pb["priority"], pb["resigned"]) == \
        (ADDR["a"], "a", "master", 150, False), pb
    assert pb["last_advert"]["from"] == ADDR["a"] and pb["last_advert"]["priority"] == 150, pb
    assert pb["last_advert"]["age_s"] < 5 and pb["sync"]["state"] == "ok", pb


def test_resign_answers_after_the_change_the_peer_logs_a_resignation_and_resume_takes_it_back(pair):
    """Issue 17 item 2: /resign answered with the role before the change ("master"), could
    not be undone, and the peer logged "master stopped".  Now the answer is the state after
    the change (backup, resigned); the peer's takeover is logged and recorded as "master
    resigned" (a stop still says "master stopped", as keepalived does for every priority 0);
    the resigned node does not preempt back; /resume answers with what the node is and will
    become, and the higher priority then takes mastership back by a normal preemption."""
    wait_roles("master", "backup", "before the resign")
    code, answer = api("a", "/resign", "POST")
    assert code == 200, answer
    assert (answer["resigned"], answer["role"], answer["vrrp_state"]) == (True, "backup", "Backup"), answer
    assert answer["expected"]["role"] == "backup" and answer["expected"]["within_ms"] is None, answer
    sa, sb = wait_roles("backup", "master", "b takes over")
    taken = [c for c in sb["role_changes"] if c["to"] == "master"][-1]
    assert taken["reason"].startswith(f"priority 0 from {ADDR['a']} (master resigned), "), taken
    assert f"Entering MASTER STATE (priority 0 from {ADDR['a']} (master resigned)" in node_log("b")
    assert "(master stopped)" not in node_log("b")
    assert sb["peer_status"]["resigned"] is True and sa["vrrp"]["resigned"] is True
    # a holds back: b's adverts (lower priority) are a live master to it, for as long as we look
    for _ in range(10):
        assert status("a")["role"] == "backup"
        time.sleep(0.1)
    code, answer = api("a", "/resume", "POST")
    assert code == 200, answer
    assert (answer["resigned"], answer["role"]) == (False, "backup"), answer
    assert answer["expected"]["role"] == "master" and answer["expected"]["within_ms"] > 0, answer
    assert "preempting lower priority master 198.18.0.12 (priority 100)" in answer["expected"]["reason"]
    sa, sb = wait_roles("master", "backup", "a preempts after resume")
    back = [c for c in sa["role_changes"] if c["to"] == "master"][-1]
    assert back["reason"].startswith(f"preempting lower priority 100 master {ADDR['b']}"), back
    assert "VRRP_Instance(VI_51) Resuming: preempting again" in node_log("a")
    # a master's "last advert seen" is now b's last one, from when b was master
    assert sa["peer_status"]["last_advert"]["from"] == ADDR["b"], sa["peer_status"]
    assert sa["peer_status"]["resigned"] is False and sb["peer_status"]["resigned"] is False
