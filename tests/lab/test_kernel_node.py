"""A running node with a `forwarding = "kernel"` service (the lab's KERNEL_VIP:80, TCP and
UDP) beside the engine-mode services of VIP:80: the engine schedules each new flow, the
kernel's conntrack NAT forwards the rest, and the kernel's own NFQUEUE counter shows how
many packets reached user space."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from director.kernel_rules import parse_table, queue_counters, timeout_generation
from lab import state as st
from lab import topology as T
from lab.nsutil import http_get, in_netns
from lab.testing import client_env, lab_session, require_lab, run_in

REPO = Path(__file__).resolve().parents[2]
PREFIX = "tkn"

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab():
    require_lab()
    with lab_session(PREFIX, node=True, ha=False, scheduler="rr", kernel=True) as info:
        yield info


def api(lab, path: str) -> dict:
    a = lab["directors"][0]
    host, port = a["api"].removeprefix("http://").split(":")
    code, body = http_get(a["ns"], host, int(port), path, timeout=3.0)
    assert code == 200, (path, code, body)
    return json.loads(body)


def queued(lab) -> int:
    text = subprocess.run(["ip", "netns", "exec", lab["directors"][0]["ns"], "cat",
                           "/proc/net/netfilter/nfnetlink_queue"],
                          capture_output=True, text=True, check=True).stdout
    return queue_counters(text)[0]["queued"]


def client(lab, *args, timeout=120):
    return run_in(lab["client"]["ns"], *args, timeout=timeout)


def test_status_names_each_service_mode(lab):
    modes = api(lab, "/status")["forwarding"]
    kernel = sorted(k for k, v in modes.items() if v == "kernel")
    assert len(kernel) == 2 and all(lab["kernel_vip"] in k for k in kernel), modes
    assert all(v == "engine" for k, v in modes.items() if lab["kernel_vip"] not in k), modes


def test_300_tcp_and_300_udp_flows_reach_all_real_servers_one_packet_each_in_user_space(lab):
    """Each flow's first packet is the only one queued (the kernel's own counter), every
    real server answers, and each sees only the service's laddr as the source."""
    before = queued(lab)
    t = client(lab, "tcp-whoami", "--host", lab["kernel_vip"], "--port", 80, "--count", 300,
               "--concurrency", 20)
    u = client(lab, "udp-whoami", "--host", lab["kernel_vip"], "--port", 80, "--count", 300)
    after = queued(lab)
    for r in (t, u):
        assert r["ok"] == 300, r
        assert sorted(r["by_server"]) == ["rs1", "rs2", "rs3"], r
        seen = {ip for peers in r["peers"].values() for ip in peers}
        assert seen == set(lab["kernel_laddrs"]), seen
    # one queued packet per flow: a UDP socket that got a source port an earlier one of the
    # run had used is the same flow to conntrack (its entry lives on), and is not queued
    flows = t["distinct_source_ports"] + u["distinct_source_ports"]
    assert after - before == flows and flows >= 590, (before, after, flows)
    handoffs = api(lab, "/status")["engine"]["kernel_handoffs"]
    assert handoffs >= flows


def test_engine_mode_services_beside_are_unchanged(lab):
    r = client(lab, "tcp-whoami", "--host", lab["vip"], "--port", 80, "--count", 60)
    assert r["ok"] == 60 and sorted(r["by_server"]) == ["rs1", "rs2", "rs3"], r
    seen = {ip for peers in r["peers"].values() for ip in peers}
    assert seen <= set(lab["laddrs"]), seen


def change(lab, path: str, body: dict | None = None) -> dict:
    """A changing request to director a's API, with the lab's token."""
    a = lab["directors"][0]

    def go():
        req = urllib.request.Request(f"{a['api']}{path}", method="POST",
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Authorization", f"Bearer {lab['api_token']}")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())
    return in_netns(a["ns"], go, timeout=20)


def kernel_tcp(lab) -> dict:
    return next(s for s in api(lab, "/services")["services"]
                if s["vip"] == lab["kernel_vip"] and s["proto"] == "tcp")


def hold(lab, conns: int, seconds: float, ready: Path) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", lab["client"]["ns"], sys.executable, "-m",
                             "lab.client", "hold", "--host", lab["kernel_vip"], "--port", "80",
                             "--conns", str(conns), "--seconds", str(seconds), "--interval", "0.1",
                             "--ready-file", str(ready)],
                            cwd=str(REPO), env=client_env(), stdout=subprocess.PIPE, text=True)


def wait_for(what, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_held_flows_are_counted_active_listed_and_survive_a_reload(lab, tmp_path):
    """30 connections held through the kernel: the real servers' active counts come from
    conntrack events (what wlc/lc read), ipvsadm lists them, and a reload that changes
    weights and adds a real server refills the maps without touching one of them."""
    ready = tmp_path / "ready"
    held = hold(lab, 30, 6.0, ready)
    try:
        assert wait_for(ready.exists), "the 30 connections did not open"
        counted = wait_for(lambda: sum(r["active"] for r in kernel_tcp(lab)["real_servers"]) == 30)
        assert counted, kernel_tcp(lab)
        assert api(lab, "/status")["kernel"]["active"] >= 30
        listing = subprocess.run(
            ["ip", "netns", "exec", lab["directors"][0]["ns"], sys.executable, "-m", "tandem.cli",
             "ipvsadm", "-L", "-n", "--api", lab["directors"][0]["api"]],
            cwd=str(REPO), env=client_env(), capture_output=True, text=True, timeout=30).stdout
        block = listing.split(f"{lab['kernel_vip']}:80")[1].split("UDP")[0]
        actives = [int(line.split()[-2]) for line in block.splitlines() if "->" in line]
        assert sum(actives) == 30, listing
        path = Path(st.load_state(PREFIX)["configs"]["a"])
        cfg = T.node_config("a", scheduler="rr", kernel=True, weights={"rs1": 3})
        cfg["node"]["state_dir"] = str(st.state_dir(PREFIX) / "a-state")
        path.write_text(T.dump_toml(cfg))
        body = change(lab, "/reload")
        assert body["changed"] is True and body["kernel_flows_deleted"] == 0, body
        out = json.loads(held.communicate(timeout=60)[0].splitlines()[-1])
        assert (out["ok"], out["reset"], out["stalled"]) == (30, 0, 0), out
    finally:
        if held.poll() is None:
            held.kill()
            held.wait()
    assert next(r for r in kernel_tcp(lab)["real_servers"]
                if r["addr"] == T.REAL_SERVERS[0]["addr"])["weight"] == 3


def test_weight_zero_and_drain_take_effect_on_new_flows(lab):
    rs2 = T.REAL_SERVERS[1]["addr"]
    base = f"/services/tcp/{lab['kernel_vip']}:80/real_servers/{rs2}:8080"
    change(lab, f"{base}/weight", {"weight": 0})
    try:
        r = client(lab, "tcp-whoami", "--host", lab["kernel_vip"], "--port", 80, "--count", 60)
        assert r["ok"] == 60 and sorted(r["by_server"]) == ["rs1", "rs3"], r
    finally:
        change(lab, f"{base}/weight", {"weight": 1})
    r = client(lab, "tcp-whoami", "--host", lab["kernel_vip"], "--port", 80, "--count", 60)
    assert r["ok"] == 60 and sorted(r["by_server"]) == ["rs1", "rs2", "rs3"], r
    change(lab, f"{base}/drain")
    try:
        r = client(lab, "tcp-whoami", "--host", lab["kernel_vip"], "--port", 80, "--count", 60)
        assert r["ok"] == 60 and sorted(r["by_server"]) == ["rs1", "rs3"], r
    finally:
        change(lab, f"{base}/weight", {"weight": 1})


def test_a_kernel_flow_times_out_after_ipvs_values(lab, tmp_path):
    """An ESTABLISHED kernel-forwarded flow gets IPVS's 900 s (the lab's [timeouts]), not
    conntrack's 5 days: the timeout the kernel reports for the held flows."""
    ready = tmp_path / "ready"
    held = hold(lab, 3, 3.0, ready)
    try:
        assert wait_for(ready.exists)
        text, timeouts = established_timeouts(lab)
        assert len(timeouts) >= 3 and all(800 < t <= 900 for t in timeouts), text
    finally:
        held.communicate(timeout=60)


def established_timeouts(lab) -> tuple[str, list[int]]:
    """`conntrack -L` of the director's ESTABLISHED kernel-mode TCP flows, and the seconds
    each has left."""
    text = subprocess.run(["ip", "netns", "exec", lab["directors"][0]["ns"], "conntrack",
                           "-L", "-p", "tcp", "-d", lab["kernel_vip"], "--dport", "80",
                           "--state", "ESTABLISHED"],
                          capture_output=True, text=True, timeout=10).stdout
    return text, [int(line.split()[2]) for line in text.splitlines() if "ESTABLISHED" in line]


def test_a_stopped_real_server_leaves_kernel_mode_scheduling_and_returns(lab):
    """A health check on the kernel-mode service (added by a reload): rs2's echo server
    stops, the check marks it down (weight 0) and new flows skip it; it comes back when
    its server runs again."""
    path = Path(st.load_state(PREFIX)["configs"]["a"])
    cfg = T.node_config("a", scheduler="rr", kernel=True)
    cfg["node"]["state_dir"] = str(st.state_dir(PREFIX) / "a-state")
    for svc in cfg["services"]:
        if svc.get("forwarding") == "kernel" and svc["proto"] == "tcp":
            svc["health"] = {"kind": "tcp", "interval": 0.5, "timeout": 0.3, "fall": 3, "rise": 2}
    path.write_text(T.dump_toml(cfg))
    assert change(lab, "/reload")["changed"] is True
    rs2 = T.REAL_SERVERS[1]["addr"]

    def health() -> str:
        return next(r for r in kernel_tcp(lab)["real_servers"] if r["addr"] == rs2).get("health")
    assert wait_for(lambda: health() == "up"), kernel_tcp(lab)
    state = st.load_state(PREFIX)
    rec = [p for p in state["processes"] if p["name"] == "echo-rs2"][-1]
    st.stop_process(rec)
    try:
        assert wait_for(lambda: health() == "down"), kernel_tcp(lab)
        r = client(lab, "tcp-whoami", "--host", lab["kernel_vip"], "--port", 80, "--count", 60)
        assert r["ok"] == 60 and sorted(r["by_server"]) == ["rs1", "rs3"], r
    finally:
        state = st.load_state(PREFIX)
        state["processes"].append(st.start_process(rec["ns"], rec["name"], rec["cmd"],
                                                   Path(rec["log"])))
        st.save_state(PREFIX, state)
    assert wait_for(lambda: health() == "up"), kernel_tcp(lab)
    r = client(lab, "tcp-whoami", "--host", lab["kernel_vip"], "--port", 80, "--count", 60)
    assert r["ok"] == 60 and sorted(r["by_server"]) == ["rs1", "rs2", "rs3"], r


def write_config(**timeouts) -> None:
    """Director a's config as the lab wrote it (rr), with these [timeouts] over the lab's."""
    path = Path(st.load_state(PREFIX)["configs"]["a"])
    cfg = T.node_config("a", scheduler="rr", kernel=True, timeouts=timeouts or None)
    cfg["node"]["state_dir"] = str(st.state_dir(PREFIX) / "a-state")
    path.write_text(T.dump_toml(cfg))


def established_kernel_conns(lab) -> list[dict]:
    page = api(lab, f"/conns?service=tcp/{lab['kernel_vip']}:80&limit=1000")
    assert page["total"] == len(page["conns"]), page        # none ended between view and kernel
    return [c for c in page["conns"] if c["state"] == "ESTABLISHED"]


def test_a_timeouts_reload_reaches_new_kernel_flows_and_conns_lists_them(lab, tmp_path):
    """[timeouts] tcp_established 900 -> 600 by a reload: flows opened after it get 600 s;
    flows held across it keep the 900 s policy they started with (an nft `ct timeout` object
    cannot be changed in place, and ctnetlink cannot give an entry another one: the old
    object stays for them).  GET /conns lists both, kernel-forwarded, with the laddr:lport,
    real server and time left the kernel holds."""
    old, new = hold(lab, 3, 8.0, tmp_path / "old"), None
    try:
        assert wait_for((tmp_path / "old").exists)
        write_config(tcp_established=600)
        assert change(lab, "/reload")["changed"] is True
        new = hold(lab, 3, 4.0, tmp_path / "new")
        assert wait_for((tmp_path / "new").exists)
        rows = wait_for(lambda: (lambda r: r if len(r) == 6 else None)(established_kernel_conns(lab)))
        assert rows, established_kernel_conns(lab)
        assert all(r["forwarding"] == "kernel" and r["created"] is None for r in rows), rows
        assert {r["local"].rsplit(":", 1)[0] for r in rows} <= set(lab["kernel_laddrs"]), rows
        assert {r["real"] for r in rows} <= {f"{x['addr']}:8080" for x in T.REAL_SERVERS}, rows
        lefts = sorted(r["expires_in"] for r in rows)
        assert all(500 < t <= 600 for t in lefts[:3]) and all(800 < t <= 900 for t in lefts[3:]), lefts
        # the old generation stays while flows that started on it run
        gens = {timeout_generation(n) for n in timeout_objects(lab)}
        assert len(gens) >= 2, timeout_objects(lab)
        for p in (old, new):
            out = json.loads(p.communicate(timeout=60)[0].splitlines()[-1])
            assert (out["ok"], out["reset"], out["stalled"]) == (3, 0, 0), out
    finally:
        for p in (old, new):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        write_config()
        change(lab, "/reload")


def timeout_objects(lab) -> list[str]:
    """The `ct timeout` objects in the director's table."""
    text = subprocess.run(["ip", "netns", "exec", lab["directors"][0]["ns"], "nft", "-j", "list",
                           "table", "inet", "tandem"], capture_output=True, text=True,
                          timeout=10, check=True).stdout
    return sorted(parse_table(text).timeouts)


def test_reloads_leave_no_stale_timeout_objects(lab):
    """Two reloads that change [timeouts] add two generations of `ct timeout` objects;
    once no flow may use the older ones (the earlier tests' flows are deleted first), the
    node deletes them: the table holds the newest generation's four alone."""
    subprocess.run(["ip", "netns", "exec", lab["directors"][0]["ns"], "conntrack", "-D", "-d",
                    lab["kernel_vip"]], capture_output=True, timeout=10)
    try:
        write_config(tcp_established=700)
        assert change(lab, "/reload")["changed"] is True
    finally:
        write_config()
        assert change(lab, "/reload")["changed"] is True

    def newest_alone():
        names = timeout_objects(lab)
        return names if len(names) == 4 and len({timeout_generation(n) for n in names}) == 1 else None
    names = wait_for(newest_alone, 20)
    assert names, (timeout_objects(lab), api(lab, "/status")["kernel"])
    k = api(lab, "/status")["kernel"]
    assert k["timeout_objects_held"] == [] and k["timeout_objects_removed"] >= 8, k
    assert names[0].endswith(f"_{max(timeout_generation(n) for n in names)}"), names


def test_a_stray_packet_to_a_laddr_is_dropped_and_counted_untranslated(lab):
    """UDP from a real server to a kernel-mode laddr that belongs to no flow: the guard
    drops it (the director's stack would answer port unreachable) and counts it."""
    def drops() -> dict:
        deadline = time.monotonic() + 3.0       # a reading taken after this call began
        while True:
            got = api(lab, "/status")["kernel"]["drops"]
            if time.monotonic() > deadline:
                return got
            time.sleep(0.4)
    before = drops()
    rs1 = lab["real_servers"][0]
    send = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.bind(({rs1['addr']!r}, 9)); "
            f"[s.sendto(b'stray', ({lab['kernel_laddrs'][0]!r}, 40000)) for _ in range(5)]")
    subprocess.run(["ip", "netns", "exec", rs1["ns"], sys.executable, "-c", send], check=True,
                   timeout=10)
    after = drops()
    assert (after["untranslated"] - before["untranslated"], after["invalid"] - before["invalid"]) \
        == (5, 0), (before, after)
    a = lab["directors"][0]
    host, port = a["api"].removeprefix("http://").split(":")
    code, metrics = http_get(a["ns"], host, int(port), "/metrics", timeout=3.0)
    line = f'tandem_kernel_drops_total{{reason="untranslated"}} {float(after["untranslated"])}'
    assert code == 200 and line in metrics.decode(), metrics[-2000:]


def test_a_restarted_node_adopts_the_kernel_flows_it_left(lab, tmp_path):
    """The node is killed (SIGKILL) while 10 connections are held through the kernel: the
    kernel keeps forwarding them (their NAT lives in conntrack), and the restarted node
    takes them from a dump at start: /status counts them (adopted, active) and so do their
    real servers, which the connection-counting schedulers read.  All 10 go on."""
    import os
    import signal
    from lab import procs
    ready = tmp_path / "ready"
    held = hold(lab, 10, 8.0, ready)
    try:
        assert wait_for(ready.exists)
        assert wait_for(lambda: sum(r["active"] for r in kernel_tcp(lab)["real_servers"]) == 10)
        state = st.load_state(PREFIX)
        rec = [p for p in state["processes"] if p["name"] == "node-a"][-1]
        os.kill(int(rec["pid"]), signal.SIGKILL)
        assert wait_for(lambda: not st.process_matches(rec), 10)
        procs.start_node(PREFIX, state, Path(state["configs"]["a"]), wait=30)
        k = api(lab, "/status")["kernel"]
        assert k["adopted"] >= 10 and k["flows"] >= 10 and k["adopt_conflicts"] == 0, k
        assert k["resyncs"] == 0, k            # adopted at start, not repaired
        assert sum(r["active"] for r in kernel_tcp(lab)["real_servers"]) == 10, kernel_tcp(lab)
        # the adopted flows keep IPVS's 900 s after their next packets (the client sends
        # every 0.1 s): the restart kept the timeout objects they use (without them:
        # conntrack's 432000 s).  A flow listed while its last data is unacknowledged
        # shows conntrack's 300 s cap for that (nf_conntrack_tcp_timeout_unacknowledged)
        time.sleep(0.5)
        text, timeouts = established_timeouts(lab)
        assert len(timeouts) == 10 and all(t <= 900 for t in timeouts), text
        out = json.loads(held.communicate(timeout=60)[0].splitlines()[-1])
        assert (out["ok"], out["reset"], out["stalled"]) == (10, 0, 0), out
    finally:
        if held.poll() is None:
            held.kill()
            held.wait()
