"""A pair whose nodes run as an unprivileged user holding only CAP_NET_ADMIN and CAP_NET_RAW.

This is how the systemd unit runs tandem (a dedicated user, AmbientCapabilities and a
bounding set of those two, NoNewPrivileges).  Each node is started through `setpriv` with
exactly that: the user `tandem` (created if missing, as the Ansible role does; nothing of
the system's is removed), no supplementary groups, the two capabilities in the inheritable,
ambient and bounding sets, no_new_privs.  Then the pair must do all its work: install its
NFQUEUE rules (iptables run as its children), bind the queue, open the raw VRRP socket,
elect, sync, add the addresses and send gratuitous ARPs on takeover, and start again after a
kill and preempt.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from lab import drill
from lab import state as lab_state
from lab.testing import lab_session, require_lab

pytestmark = pytest.mark.lab

PREFIX = "tpriv"
USER = "tandem"
CAPS = "-all,+net_admin,+net_raw"
#: CAP_NET_ADMIN (12) and CAP_NET_RAW (13), as /proc/PID/status shows a capability set
CAP_MASK = (1 << 12) | (1 << 13)


def ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True, timeout=30)
        return pwd.getpwnam(name)


def unprivileged(cmd: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups",
            f"--inh-caps={CAPS}", f"--ambient-caps={CAPS}", f"--bounding-set={CAPS}",
            "--no-new-privs", "--", *cmd]


@pytest.fixture(scope="module")
def pair():
    require_lab()
    user = ensure_user(USER)
    real_start = lab_state.start_process

    def start_process(ns, name, cmd, log_path, env_extra=None):
        # the lab's nodes (first start and every restart) go through setpriv; the echo
        # servers and clients stay as they are
        if name.startswith("node-"):
            # as the Ansible role installs it: root-owned, readable by the node's group only
            config = cmd[list(cmd).index("--config") + 1]
            os.chown(config, 0, user.pw_gid)
            os.chmod(config, 0o640)
            cmd = unprivileged(list(cmd))
        return real_start(ns, name, cmd, log_path, env_extra)

    # each node's notify hook records who it runs as and what it holds
    hooks = tempfile.mkdtemp(prefix="tandem-priv-hooks-")
    os.chown(hooks, user.pw_uid, user.pw_gid)
    hook = ["/bin/sh", "-c", f"grep -E '^(Uid|Cap)' /proc/self/status > {hooks}/$2-$1", "hook"]
    mp = pytest.MonkeyPatch()
    mp.setattr(lab_state, "start_process", start_process)
    try:
        with lab_session(PREFIX, node=True, ha=True, advert_interval=0.1,
                         config_extra={"notify": {"master": hook, "backup": hook}}) as info:
            yield info, user, Path(hooks)
    finally:
        mp.undo()
        shutil.rmtree(hooks, ignore_errors=True)


def node_credentials(pid: int) -> dict[str, int]:
    return credentials(f"/proc/{pid}/status")


def credentials(path) -> dict[str, int]:
    fields = {}
    with open(path) as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid"):
                fields[key] = int(value.split()[1])        # effective
            elif key in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh", "NoNewPrivs"):
                fields[key] = int(value.strip(), 16 if key.startswith("Cap") else 10)
    return fields


def test_nodes_run_unprivileged_with_only_net_admin_and_net_raw(pair):
    info, user, _ = pair
    nodes = [p for p in info["processes"] if p["name"].startswith("node-")]
    assert {p["name"] for p in nodes} == {"node-a", "node-b"}
    for p in nodes:
        c = node_credentials(p["pid"])
        assert (c["Uid"], c["Gid"]) == (user.pw_uid, user.pw_gid), (p, c)
        assert c["CapEff"] == c["CapPrm"] == c["CapBnd"] == c["CapAmb"] == CAP_MASK, (p, c)
        assert c["NoNewPrivs"] == 1


def test_unprivileged_pair_forwards_syncs_and_takes_over_then_preempts_again(pair):
    """Kill the master: the backup, unprivileged too, already holds every connection (sync),
    adds the addresses, announces them and forwards; then the restarted a (unprivileged)
    strips what its killed predecessor left, resyncs and preempts: 200 connections survive
    both moves."""
    r = drill.run(PREFIX, "kill", conns=200, interval=0.05, duration=4.0, lead=1.0)
    assert (r["old_master"], r["new_master"]) == ("a", "b"), r
    assert (r["survived"], r["reset"], r["stalled"]) == (200, 0, 0), r
    assert r["dual_master_ms"] == 0.0, r
    back = drill.run(PREFIX, "restore", conns=200, interval=0.05, duration=5.0, lead=1.0,
                     target="a")
    assert back["new_master"] == "a", back
    assert (back["survived"], back["reset"], back["stalled"]) == (200, 0, 0), back
    restarted = lab_state.load_state(PREFIX)
    a = [p for p in restarted["processes"] if p["name"] == "node-a"][-1]
    assert node_credentials(a["pid"])["Uid"] == pair[1].pw_uid


def test_notify_hooks_of_an_unprivileged_node_run_as_its_user_without_its_capabilities(pair):
    """The node holds CAP_NET_ADMIN and CAP_NET_RAW as ambient capabilities, which a program
    it starts would inherit; its hooks must get none (director/scripts.py drops them)."""
    _, user, hooks = pair
    deadline = time.monotonic() + 20
    while not {"a-master", "b-backup"} <= {p.name for p in hooks.iterdir()}:
        assert time.monotonic() < deadline, sorted(p.name for p in hooks.iterdir())
        time.sleep(0.1)
    for name in ("a-master", "b-backup"):
        c = credentials(hooks / name)
        assert c["Uid"] == user.pw_uid, (name, c)
        assert c["CapEff"] == c["CapPrm"] == c["CapAmb"] == c["CapInh"] == 0, (name, c)
