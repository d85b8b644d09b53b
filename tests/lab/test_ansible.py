"""The Ansible deployment (ansible/) against the lab pair, over real SSH.

The lab comes up without nodes; an sshd runs in each director namespace (on the
director's front address, with a host key and an authorized key made for the
test), and ansible-playbook runs in the router namespace, which reaches the
directors' front segment (the host itself is not in the lab network).  The
playbook deploys both nodes from a fresh state; a second run must change
nothing; the two deployed nodes must elect one master; and a graceful stop of
the master (the role's own supervisor script) must keep every connection of a
`lab.client hold` running across it.

Everything the playbook writes lives under a temporary root (`tandem_prefix`),
each director in its own directories (inventory host_vars), because the lab's
namespaces share the host's filesystem.  Nodes are stopped through their pid
files, sshd by PID, the lab by name, and the root is removed.  The SSH and Ansible
plumbing is tests/lab/ansible_ssh.py (tests/lab/test_ansible_cluster.py uses it too).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from director.config import parse
from lab import nsutil, topology
from lab.testing import REPO_ROOT, lab_session, require_lab
from tests.lab import ansible_ssh as A

pytestmark = pytest.mark.lab

PREFIX = "tans"
INVENTORY = REPO_ROOT / "ansible" / "inventory" / "hosts.yml"
HOLD_CONNS = 50


# ---------------------------------------------------------------------------------------
# the deployed nodes


def _roles() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("a", "b"):
        try:
            out[name] = topology.node_status(PREFIX, name, timeout=0.5).get("role")
        except Exception:  # noqa: BLE001 - a stopped node does not answer
            out[name] = None
    return out


def _wait_roles(want: dict[str, str | None], wait: float) -> dict[str, str | None]:
    end = time.monotonic() + wait
    roles = _roles()
    while roles != want and time.monotonic() < end:
        time.sleep(0.1)
        roles = _roles()
    return roles


def _playbook(ctl: A.Controller, extra: Path, label: str,
              tags: str | None = None) -> dict[str, dict[str, int]]:
    return A.playbook(ctl, INVENTORY, extra, label, {"a", "b"}, tags=tags)


def _a_changed_config_reloads_or_restarts_as_the_change_needs(ctl: A.Controller,
                                                             root: Path) -> None:
    """A reloadable change ([timeouts]) is reloaded: same supervisor, the node logs the
    reload.  A change only a restart applies ([interfaces] garp_count) restarts the node:
    a reload would be refused by the node and leave the old config running, as the role
    did before it asked `tandem check-config NEW --against OLD`."""
    tmp = ctl.tmp
    base = json.loads((tmp / "extra-vars.json").read_text())
    base.pop("tandem_serial")       # a change to running nodes rolls: one director at a time
    steps = [("reload", {"tandem_timeouts": {"tcp_fin_wait": 100}}),
             ("restart", {"tandem_timeouts": {"tcp_fin_wait": 100}, "tandem_garp_count": 4})]
    for label, change in steps:
        before = {h: A.supervisor_pid(root, h) for h in ("a", "b")}
        logged = {h: A.deployed_paths(root, h)["log"].stat().st_size for h in ("a", "b")}
        extra = tmp / f"extra-vars-{label}.json"
        extra.write_text(json.dumps({**base, **change}))
        # only the config and the service (the role's tags), as an operator pushes a config
        recap = _playbook(ctl, extra, label, tags="config,service")
        for h in ("a", "b"):
            assert recap[h]["changed"] > 0, recap
            with open(A.deployed_paths(root, h)["log"], "rb") as fh:
                fh.seek(logged[h])
                log = fh.read().decode(errors="replace")
            assert "reload refused" not in log, log[-3000:]
            with open(A.deployed_paths(root, h)["config"], "rb") as fh:
                deployed = tomllib.load(fh)
            assert deployed["timeouts"]["tcp_fin_wait"] == 100, deployed
            if label == "reload":
                assert A.supervisor_pid(root, h) == before[h], (h, label)
                assert f"node {h}: reloaded" in log, log[-3000:]
            else:
                assert deployed["interfaces"]["garp_count"] == 4, deployed
                assert A.supervisor_pid(root, h) != before[h], (h, label, log[-3000:])
        print(f"ansible-playbook {label} run: the nodes {'reloaded' if label == 'reload' else 'restarted'}")


# ---------------------------------------------------------------------------------------


def test_ansible_deploys_the_pair_idempotently_and_it_fails_over():
    require_lab()
    A.need_ansible_and_ssh()
    A.ensure_wheelhouse()

    tmp = Path(tempfile.mkdtemp(prefix="tandem-ansible-"))
    root = tmp / "root"
    hosts = [A.Host(d["name"], topology.ns_name(PREFIX, d["name"]), d["front_addr"])
             for d in topology.DIRECTORS]
    try:
        with lab_session(PREFIX, node=False, ha=True):
            # without nodes the lab gives director a the VIP and the laddrs (it would be
            # the only one serving them); the deployed pair's elected master adds them
            topology._strip_service_addresses(PREFIX, "a")
            with A.sshd_per_director(tmp, topology.ns_name(PREFIX, "router"), hosts) as ctl:
                try:
                    _deploy_and_drill(ctl, root)
                finally:
                    for h in hosts:
                        A.stop_deployed_node(root, h.name, h.ns)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _deploy_and_drill(ctl: A.Controller, root: Path) -> None:
    tmp = ctl.tmp
    extra = tmp / "extra-vars.json"
    extra.write_text(json.dumps({
        "tandem_prefix": str(root),
        "tandem_wheelhouse": str(A.WHEELHOUSE),
        "tandem_build_dir": str(tmp / "build"),
        "tandem_source_dir": str(A.snapshot_source(tmp / "src")),
        # the inventory takes the key from the vault only (no public fallback)
        "vault_tandem_sync_key": topology.SYNC_KEY,
        "vault_tandem_api_token": nsutil.LAB_API_TOKEN,
        # a first deployment (nothing runs yet), and a run that must change nothing: both
        # directors at once; the changes below roll, one by one, as the playbook's default
        "tandem_serial": "100%",
    }))

    first = _playbook(ctl, extra, "first")
    for host in ("a", "b"):
        assert first[host]["changed"] > 0, first

    # each node runs exactly the config the lab would give it
    for d in topology.DIRECTORS:
        with open(A.deployed_paths(root, d["name"])["config"], "rb") as fh:
            deployed = tomllib.load(fh)
        # the same config once read: the inventory leaves the node's defaults
        # (schema.keys) unwritten where the lab writes them out
        assert parse(deployed, "n.toml") == parse(
            topology.node_config(d["name"], ha=True), "n.toml")
        assert oct(A.deployed_paths(root, d["name"])["config"].stat().st_mode & 0o777) == "0o600"

    second = _playbook(ctl, extra, "second")
    log2 = (tmp / "ansible-second.log").read_text()
    for host in ("a", "b"):
        assert second[host]["changed"] == 0, (second, A.changed_tasks(log2))

    # the deployed pair elected a master: a (priority 150), b backs up
    roles = _wait_roles({"a": "master", "b": "backup"}, wait=20.0)
    assert roles == {"a": "master", "b": "backup"}, roles

    _a_changed_config_reloads_or_restarts_as_the_change_needs(ctl, root)
    roles = _wait_roles({"a": "master", "b": "backup"}, wait=30.0)
    assert roles == {"a": "master", "b": "backup"}, roles

    # a graceful stop of the master through the supervisor, across live connections
    master_ctl = str(A.deployed_paths(root, "a")["ctl"])
    res = A.hold_across(["ip", "netns", "exec", topology.ns_name(PREFIX, "a"), master_ctl, "stop"],
                        tmp, topology.ns_name(PREFIX, "client"), topology.VIP,
                        topology.SERVICE_PORT, HOLD_CONNS)
    assert res.get("connected") == HOLD_CONNS, res
    assert (res["ok"], res["reset"], res["stalled"], res["mismatch"]) == (HOLD_CONNS, 0, 0, 0), res
    roles = _wait_roles({"a": None, "b": "master"}, wait=10.0)
    assert roles == {"a": None, "b": "master"}, roles
    print(f"drill: master a stopped (tandemctl stop), b took over; {res['ok']}/{HOLD_CONNS} "
          f"connections kept, longest silence of a connection {res.get('max_gap_ms')} ms")
