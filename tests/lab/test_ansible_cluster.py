"""The Ansible deployment of a cluster (ansible/inventory-cluster/) against the cluster
lab, over real SSH: three directors, each with its node and its own BIRD.

The cluster lab comes up without nodes and without BIRD on the directors
(`lab.cluster.up(nodes=False)`: the router with its BIRD and ECMP, the client, the real
servers with their echo servers).  An sshd runs in each director namespace, and
ansible-playbook runs in the router namespace (tests/lab/ansible_ssh.py).  The playbook
deploys the three directors from a fresh state: tandem in cluster mode and BIRD 2, both
under the role's supervisor (BIRD as its own daemon with a pid file and a control socket
per director).  Then the test checks what the deployment must give:

- each node runs the config the cluster lab would give it (paths aside);
- a second run changes nothing;
- the router's kernel routes both VIPs (the engine-mode one and the kernel-mode one) via
  all three directors and each laddr via its owner (BGP from the deployed BIRDs, ECMP at
  the router);
- each node's /status says `cluster` state active, three members, all alive;
- connections through each VIP succeed, reach the real servers, and pass through every
  director (each one's laddr of that mode seen by the real servers);
- a graceful stop of one director through the role's supervisor script (`tandemctl
  stop`) keeps every held connection (engine-mode VIP), the router drops that director's
  next hop of both VIPs while its laddrs stay routed (their adopters), and new
  connections through each VIP still succeed.

Everything lives under a temporary root (`tandem_prefix`), in directories named after
each director.  Nodes are stopped through their supervisor's pid file, each BIRD by
`birdc down` and its pid file, sshd by PID, the lab by name; the root is removed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from director.config import parse
from lab import bgp, cluster, cluster_plan, topology
from lab.plan import API_TOKEN, SYNC_KEY
from lab.testing import REPO_ROOT, require_lab, run_in
from tests.lab import ansible_ssh as A

pytestmark = pytest.mark.lab

PREFIX = "tanc"
INVENTORY = REPO_ROOT / "ansible" / "inventory-cluster" / "hosts.yml"
NAMES = ("a", "b", "c")
NEW_CONNS = 60
HOLD_CONNS = 30
STOPPED = "c"
#: the director whose node is frozen (SIGSTOP): the watchdog must find it hung
HUNG = "a"


def _bird_paths(root: Path, name: str) -> dict[str, Path]:
    """BIRD's files as the cluster inventory places them under the root."""
    return {"conf": root / "etc" / f"bird-{name}" / "bird.conf",
            "include": root / "etc" / f"bird-{name}" / "tandem" / "announce.conf",
            "ctl": root / "run" / f"bird-{name}" / "bird.ctl",
            "pid": root / "run" / f"bird-{name}" / "bird.pid",
            "log": root / "var" / "log" / f"bird-{name}.log"}


def _stop_bird(root: Path, host: A.Host) -> None:
    """`birdc down` on the director's socket; a BIRD still there after it (its pid file's
    PID, running this director's config) is killed."""
    p = _bird_paths(root, host.name)
    try:
        pid = int(p["pid"].read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = None
    try:
        A.run(["ip", "netns", "exec", host.ns, "birdc", "-s", str(p["ctl"]), "down"], timeout=10)
    except (subprocess.TimeoutExpired, OSError):
        pass
    if pid is None:
        return
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return
        if str(p["conf"]).encode() not in argv:
            return                  # the PID is someone else's now
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _lab_config(desc: dict, root: Path, name: str) -> dict:
    """The node config the cluster lab gives director `name`, with the deployment's paths."""
    cfg = cluster.node_config(PREFIX, desc, name)
    bird = _bird_paths(root, name)
    cfg["node"]["state_dir"] = str(root / "var" / "lib" / f"tandem-{name}")
    cfg["cluster"].update(bird_socket=str(bird["ctl"]), announce_include=str(bird["include"]))
    return cfg


def _differences(got: object, want: object, path: str = "") -> list[str]:
    """Where two parsed configs (as dicts) differ, as readable lines."""
    if isinstance(got, dict) and isinstance(want, dict):
        return [d for k in sorted(set(got) | set(want), key=str)
                for d in _differences(got.get(k), want.get(k), f"{path}.{k}")]
    return [] if got == want else [f"{path}: deployed {got!r}, the lab's {want!r}"]


def _node_pid(root: Path, name: str) -> int:
    """The node process the role's supervisor runs (its one child)."""
    sup = A.supervisor_pid(root, name)
    kids = [int(k) for t in Path(f"/proc/{sup}/task").iterdir()
            for k in (t / "children").read_text().split()]
    assert len(kids) == 1, kids
    return kids[0]


def _a_hung_node_is_killed_its_routes_withdrawn_and_it_comes_back(desc: dict, root: Path) -> None:
    """The node of HUNG is frozen (SIGSTOP: alive, silent, as a deadlock leaves it); its BIRD
    runs on and would announce its routes forever.  The supervisor hears no watchdog ping
    for tandem_watchdog_sec (5 s), kills it, withdraws its routes and starts it again:
    the VIPs go from the router's routes via HUNG, then come back."""
    frozen = _node_pid(root, HUNG)
    t0 = time.monotonic()
    os.kill(frozen, signal.SIGSTOP)
    rest = [_addr(desc, n) for n in NAMES if n != HUNG]
    try:
        bgp.wait_nexthops(PREFIX, desc["vip"], rest, wait=30)
        gone = time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen, signal.SIGCONT)     # killed already, unless the test failed
    for v in cluster_plan.vips(desc):
        bgp.wait_nexthops(PREFIX, v, [_addr(desc, n) for n in NAMES], wait=40)
    back = time.monotonic() - t0
    assert _node_pid(root, HUNG) != frozen
    log = A.deployed_paths(root, HUNG)["log"].read_text(errors="replace")
    assert "sent no watchdog ping" in log and "routes: withdrawn" in log, log[-3000:]
    _wait_active(desc, wait=30)
    print(f"hung node: {HUNG}'s node frozen (SIGSTOP), killed by tandemctl's watchdog, its "
          f"routes withdrawn ({gone:.1f} s after the freeze), restarted: the VIPs via all "
          f"three again ({back:.1f} s)")


def _wait_active(desc: dict, wait: float) -> dict[str, dict]:
    """Every node's /status once all say `cluster` state active with every member alive
    (or what they said last, after `wait`)."""
    end = time.monotonic() + wait
    while True:
        views: dict[str, dict] = {}
        for n in NAMES:
            try:
                views[n] = cluster.status(PREFIX, n, timeout=1.0)
            except Exception as exc:  # noqa: BLE001 - reported if it stays so
                views[n] = {"error": repr(exc)}
        if all(v.get("cluster", {}).get("state") == "active"
               and all(m["alive"] for m in v["cluster"]["members"].values())
               for v in views.values()) or time.monotonic() >= end:
            return views
        time.sleep(0.2)


def _addr(desc: dict, name: str) -> str:
    return next(d["front_addr"] for d in desc["directors"] if d["name"] == name)


def _laddrs(desc: dict, name: str) -> list[str]:
    """Director `name`'s laddrs: the engine-mode one, then the kernel-mode one."""
    return next(d["laddrs"] for d in desc["directors"] if d["name"] == name)


def _through_vips(desc: dict, count: int) -> dict[str, dict]:
    """`count` new connections through each VIP; each must succeed and reach the real
    servers, from the laddrs of that VIP's mode (index into `_laddrs`)."""
    out = {}
    for mode, vip in enumerate(cluster_plan.vips(desc)):
        new = run_in(desc["client"]["ns"], "tcp-whoami", "--host", vip, "--port", 80,
                     "--count", count, "--concurrency", 6)
        assert new["ok"] == count, (vip, new)
        assert set(new["peers"]) <= {r["name"] for r in desc["real_servers"]}, (vip, new)
        seen = {a for laddrs in new["peers"].values() for a in laddrs}
        assert seen <= {_laddrs(desc, n)[mode] for n in NAMES}, (vip, new)
        out[vip] = {"seen": seen, "peers": new["peers"]}
    return out


def test_ansible_deploys_the_cluster_and_its_bird_idempotently_and_a_director_stops_gracefully():
    require_lab()
    A.need_ansible_and_ssh()
    A.need(shutil.which("bird") is not None and shutil.which("birdc") is not None,
           "bird2 is not installed: run make setup")
    A.ensure_wheelhouse()

    tmp = Path(tempfile.mkdtemp(prefix="tandem-ansible-cluster-"))
    root = tmp / "root"
    try:
        try:
            info = cluster.up(PREFIX, len(NAMES), nodes=False)
            hosts = [A.Host(d["name"], d["ns"], d["front_addr"]) for d in info["directors"]]
            with A.sshd_per_director(tmp, info["router"]["ns"], hosts) as ctl:
                try:
                    _deploy_and_drill(ctl, root)
                finally:
                    for h in hosts:
                        A.stop_deployed_node(root, h.name, h.ns)
                    for h in hosts:
                        _stop_bird(root, h)
        finally:
            result = topology.down(PREFIX)
            assert not result["errors"], result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _deploy_and_drill(ctl: A.Controller, root: Path) -> None:
    tmp = ctl.tmp
    desc = cluster_plan.plan(PREFIX, len(NAMES))
    extra = tmp / "extra-vars.json"
    extra.write_text(json.dumps({
        "tandem_prefix": str(root),
        "tandem_wheelhouse": str(A.WHEELHOUSE),
        "tandem_build_dir": str(tmp / "build"),
        "tandem_source_dir": str(A.snapshot_source(tmp / "src")),
        # the inventory takes the secrets from the vault only (no public fallback)
        "vault_tandem_sync_key": SYNC_KEY,
        "vault_tandem_api_token": API_TOKEN,
        # a first deployment (nothing runs yet), and a run that must change nothing: every
        # director at once, where a rolling change goes one by one (the pair's test)
        "tandem_serial": "100%",
    }))

    first = A.playbook(ctl, INVENTORY, extra, "first", set(NAMES))
    assert all(first[n]["changed"] > 0 for n in NAMES), first

    # each node runs the config the cluster lab gives it (the node's defaults unwritten)
    for n in NAMES:
        with open(A.deployed_paths(root, n)["config"], "rb") as fh:
            deployed = tomllib.load(fh)
        got, want = parse(deployed, "n.toml"), parse(_lab_config(desc, root, n), "n.toml")
        assert got == want, _differences(dataclasses.asdict(got), dataclasses.asdict(want))

    second = A.playbook(ctl, INVENTORY, extra, "second", set(NAMES))
    log2 = (tmp / "ansible-second.log").read_text()
    assert all(second[n]["changed"] == 0 for n in NAMES), (second, A.changed_tasks(log2))

    # BGP from the deployed BIRDs: each VIP via all three, each laddr via its owner
    vips = cluster_plan.vips(desc)
    assert len(vips) == 2, vips                 # the engine-mode VIP and the kernel-mode one
    for v in vips:
        bgp.wait_nexthops(PREFIX, v, [_addr(desc, n) for n in NAMES], wait=30)
    for n in NAMES:
        for a in _laddrs(desc, n):
            bgp.wait_nexthops(PREFIX, a, [_addr(desc, n)], wait=30)
    views = _wait_active(desc, wait=20)
    for n, v in views.items():
        c = v.get("cluster", {})
        assert v.get("role") == "member" and c.get("state") == "active", (n, v)
        assert sorted(c["members"]) == list(NAMES), (n, c)
        assert all(m["alive"] for m in c["members"].values()), (n, c)
        assert c["announced"] == sorted(f"{a}/32" for a in [*vips, *_laddrs(desc, n)]), (n, c)
        assert c["bird_has"] == c["announced"], (n, c)

    # connections through each VIP reach the real servers, through every director
    seen = _through_vips(desc, NEW_CONNS)
    for mode, v in enumerate(vips):
        assert seen[v]["seen"] == {_laddrs(desc, n)[mode] for n in NAMES}, (v, seen[v])
    print(f"deployed cluster: {NEW_CONNS}/{NEW_CONNS} connections through each VIP, real "
          f"servers and laddrs seen: { {v: x['peers'] for v, x in seen.items()} }")

    _a_hung_node_is_killed_its_routes_withdrawn_and_it_comes_back(desc, root)

    # a graceful stop of one director through the role's supervisor script
    stopped = STOPPED
    client = desc["client"]["ns"]
    ns = next(d["ns"] for d in desc["directors"] if d["name"] == stopped)
    res = A.hold_across(["ip", "netns", "exec", ns, str(A.deployed_paths(root, stopped)["ctl"]), "stop"],
                        tmp, client, desc["vip"], 80, HOLD_CONNS, timeout=10.0)
    assert res.get("connected") == HOLD_CONNS, res
    assert (res["ok"], res["reset"], res["stalled"], res["mismatch"]) == (HOLD_CONNS, 0, 0, 0), res
    rest = [n for n in NAMES if n != stopped]
    for v in vips:
        bgp.wait_nexthops(PREFIX, v, [_addr(desc, n) for n in rest], wait=20)
    adopters = {}
    for a in _laddrs(desc, stopped):
        end = time.monotonic() + 20
        while (hops := bgp.nexthops(PREFIX, a)) not in [[_addr(desc, n)] for n in rest]:
            assert time.monotonic() < end, f"{stopped}'s laddr {a} via {hops}, not via one of {rest}"
            time.sleep(0.05)
        adopters[a] = hops[0]
    after = _through_vips(desc, NEW_CONNS // 2)
    print(f"drill: {stopped} stopped (tandemctl stop): VIPs via {' '.join(rest)}, its laddrs "
          f"via {adopters}; {res['ok']}/{HOLD_CONNS} held connections kept, longest silence "
          f"of a connection {res.get('max_gap_ms')} ms; then {NEW_CONNS // 2} new connections "
          f"through each VIP, laddrs seen: { {v: sorted(x['seen']) for v, x in after.items()} }")
