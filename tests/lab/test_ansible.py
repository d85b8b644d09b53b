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
files, sshd by PID, the lab by name, and the root is removed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from director.config import parse
from lab import nsutil, topology
from lab.testing import REPO_ROOT, client_env, lab_session, require_lab

pytestmark = pytest.mark.lab

PREFIX = "tans"
VENV_BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = VENV_BIN / "ansible-playbook"
SSHD = Path("/usr/sbin/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
INVENTORY = REPO_ROOT / "ansible" / "inventory" / "hosts.yml"
PLAYBOOK = REPO_ROOT / "ansible" / "playbook.yml"
WHEELHOUSE = REPO_ROOT / ".venv" / "share" / "tandem" / "wheelhouse"
PLAYBOOK_TIMEOUT = 240.0
RECAP_RE = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)"
    r"\s+ignored=(?P<ignored>\d+)", re.M)
HOLD_CONNS = 50


def _need(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("TANDEM_REQUIRE_LAB") == "1":
        pytest.fail(f"TANDEM_REQUIRE_LAB=1 but {why}", pytrace=False)
    pytest.skip(why)


def _run(argv: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def _ensure_wheelhouse() -> None:
    """The wheels of tandem's dependencies the targets install from (they reach no
    package index); `make setup` builds them, and so does this, once."""
    if (WHEELHOUSE / ".complete").exists():
        return
    cp = _run([str(REPO_ROOT / "ansible" / "wheelhouse.sh"), str(WHEELHOUSE), sys.executable],
              timeout=600)
    assert cp.returncode == 0, f"building the wheelhouse failed:\n{cp.stdout}\n{cp.stderr}"


def _snapshot_source(dest: Path) -> Path:
    """A copy of the checkout to deploy from: the tree may be edited while the test
    runs, and the second run must see the same sources as the first."""
    shutil.copytree(REPO_ROOT, dest, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "*.pyc", "build", "dist", "*.egg-info", ".pytest_cache",
        ".hypothesis", ".ansible", "tests", "bench", "ansible"))
    return dest


# ---------------------------------------------------------------------------------------
# sshd per director namespace


def _make_keys(ssh_dir: Path) -> tuple[Path, Path]:
    """A client key (authorized for root) and one host key per director; known_hosts."""
    ssh_dir.mkdir(mode=0o700)
    key = ssh_dir / "id_ed25519"
    cp = _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tandem-ansible-test",
               "-f", str(key)], timeout=30)
    assert cp.returncode == 0, cp.stderr
    (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    known = []
    for d in topology.DIRECTORS:
        hdir = ssh_dir / d["name"]
        hdir.mkdir(mode=0o700)
        hkey = hdir / "ssh_host_ed25519_key"
        cp = _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"host-{d['name']}",
                   "-f", str(hkey)], timeout=30)
        assert cp.returncode == 0, cp.stderr
        kind, blob = hkey.with_suffix(".pub").read_text().split()[:2]
        known.append(f"{d['front_addr']} {kind} {blob}")
        (hdir / "sshd_config").write_text("\n".join([
            f"ListenAddress {d['front_addr']}:22",
            f"HostKey {hkey}",
            f"PidFile {hdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {ssh_dir / 'authorized_keys'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PrintMotd no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "MaxStartups 50:30:100",
            f"Subsystem sftp {SFTP_SERVER}",
            "",
        ]))
    known_hosts = ssh_dir / "known_hosts"
    known_hosts.write_text("\n".join(known) + "\n")
    return key, known_hosts


def _start_sshd(ssh_dir: Path, name: str) -> subprocess.Popen:
    cfg = ssh_dir / name / "sshd_config"
    cp = _run([str(SSHD), "-t", "-f", str(cfg)], timeout=30)
    assert cp.returncode == 0, f"sshd -t: {cp.stderr}"
    log = open(ssh_dir / name / "sshd.log", "ab")
    try:
        # ip netns exec execs sshd: the PID is sshd's own
        return subprocess.Popen(
            ["ip", "netns", "exec", topology.ns_name(PREFIX, name), str(SSHD), "-D", "-e", "-f", str(cfg)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    finally:
        log.close()


def _stop_pid(proc: subprocess.Popen, wait: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(wait)


def _ssh_argv(key: Path, known_hosts: Path) -> list[str]:
    return ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", f"IdentityFile={key}",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=5"]


def _exit_ssh_masters(control_dir: Path) -> None:
    """End the SSH connection masters Ansible left (ControlPersist), through their sockets."""
    if not control_dir.is_dir():
        return
    for sock in control_dir.iterdir():
        try:
            _run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "tandem-ansible-test"], timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            pass


def _wait_ssh(key: Path, known_hosts: Path, addr: str, procs: list[subprocess.Popen],
              wait: float = 20.0) -> None:
    router = topology.ns_name(PREFIX, "router")
    end = time.monotonic() + wait
    last = ""
    while time.monotonic() < end:
        for p in procs:
            assert p.poll() is None, f"sshd exited with {p.returncode}"
        try:
            cp = _run(["ip", "netns", "exec", router, "ssh", "-o", "ControlMaster=no",
                       "-o", "ControlPath=none", *_ssh_argv(key, known_hosts), f"root@{addr}", "true"],
                      timeout=10)
            if cp.returncode == 0:
                return
            last = cp.stderr.strip()
        except subprocess.TimeoutExpired:
            last = "ssh timed out"
        time.sleep(0.2)
    raise AssertionError(f"ssh root@{addr} from the router namespace failed for {wait}s: {last}")


# ---------------------------------------------------------------------------------------
# ansible-playbook in the router namespace


def _ansible_env(tmp: Path, key: Path, known_hosts: Path) -> dict[str, str]:
    cfg = tmp / "ansible.cfg"
    cfg.write_text("[defaults]\n")          # nothing from ~/.ansible.cfg or /etc/ansible
    (tmp / "cp").mkdir(mode=0o700, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(cfg),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-remote"),
        "ANSIBLE_PIPELINING": "True",
        # one SSH connection per host, reused by every task; _exit_ssh_masters ends them
        "ANSIBLE_SSH_ARGS": " ".join(["-o", "ControlMaster=auto", "-o", "ControlPersist=60s",
                                      "-o", f"ControlPath={tmp / 'cp'}/%C",
                                      *_ssh_argv(key, known_hosts)]),
        "ANSIBLE_PRIVATE_KEY_FILE": str(key),
        "ANSIBLE_TIMEOUT": "10",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
    })
    for k in ("ANSIBLE_VAULT_PASSWORD_FILE", "ANSIBLE_INVENTORY", "ANSIBLE_ROLES_PATH"):
        env.pop(k, None)
    return env


def _playbook(tmp: Path, env: dict[str, str], extra: Path, label: str,
              tags: str | None = None) -> dict[str, dict[str, int]]:
    argv = ["ip", "netns", "exec", topology.ns_name(PREFIX, "router"), str(ANSIBLE_PLAYBOOK),
            "-i", str(INVENTORY), str(PLAYBOOK), "-e", f"@{extra}"]
    if tags:
        argv += ["--tags", tags]
    t0 = time.monotonic()
    cp = _run(argv, timeout=PLAYBOOK_TIMEOUT, cwd=str(REPO_ROOT), env=env)
    out = cp.stdout + cp.stderr
    (tmp / f"ansible-{label}.log").write_text(out)
    recap = {m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
             for m in RECAP_RE.finditer(cp.stdout)}
    lines = [m.group(0) for m in RECAP_RE.finditer(cp.stdout)]
    print(f"ansible-playbook {label} run ({time.monotonic() - t0:.1f} s, rc {cp.returncode}):")
    for ln in lines:
        print("  " + ln)
    assert cp.returncode == 0 and set(recap) == {"a", "b"}, (
        f"ansible-playbook ({label}) failed, rc {cp.returncode}:\n{out[-6000:]}")
    for host, r in recap.items():
        assert r["failed"] == 0 and r["unreachable"] == 0, f"{label}: {host}: {r}\n{out[-4000:]}"
    return recap


def _changed_tasks(log: str) -> list[str]:
    """The tasks a run reported as changed (for a readable failure)."""
    out, task = [], ""
    for ln in log.splitlines():
        if ln.startswith(("TASK [", "RUNNING HANDLER [")):
            task = ln.split("[", 1)[1].rsplit("]", 1)[0]
        elif ln.startswith("changed:"):
            out.append(f"{task}: {ln}")
    return out


# ---------------------------------------------------------------------------------------
# the deployed nodes


def _paths(root: Path, name: str) -> dict[str, Path]:
    return {
        "ctl": root / "opt" / f"tandem-{name}" / "bin" / "tandemctl",
        "config": root / "etc" / f"tandem-{name}" / f"{name}.toml",
        "pid": root / "run" / f"tandem-{name}" / "tandem.pid",
        "log": root / "var" / "log" / f"tandem-{name}" / "tandem.log",
    }


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


def _stop_node(root: Path, name: str) -> None:
    """Stop a deployed node: its supervisor script, else SIGKILL to the process group
    of the PID in its pid file (the supervisor leads its own session)."""
    p = _paths(root, name)
    if p["ctl"].exists():
        try:
            _run(["ip", "netns", "exec", topology.ns_name(PREFIX, name), str(p["ctl"]), "stop"],
                 timeout=40)
        except (subprocess.TimeoutExpired, OSError):
            pass
    try:
        pid = int(p["pid"].read_text().split()[0])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return
    if str(p["ctl"]).encode() in argv and b"supervise" in argv:
        os.killpg(pid, signal.SIGKILL)


def _supervisor_pid(root: Path, name: str) -> int:
    return int(_paths(root, name)["pid"].read_text().split()[0])


def _a_changed_config_reloads_or_restarts_as_the_change_needs(tmp: Path, env: dict[str, str],
                                                             root: Path) -> None:
    """A reloadable change ([timeouts]) is reloaded: same supervisor, the node logs the
    reload.  A change only a restart applies ([interfaces] garp_count) restarts the node:
    a reload would be refused by the node and leave the old config running, as the role
    did before it asked `tandem check-config NEW --against OLD`."""
    base = json.loads((tmp / "extra-vars.json").read_text())
    steps = [("reload", {"tandem_timeouts": {"tcp_fin_wait": 100}}),
             ("restart", {"tandem_timeouts": {"tcp_fin_wait": 100}, "tandem_garp_count": 4})]
    for label, change in steps:
        before = {h: _supervisor_pid(root, h) for h in ("a", "b")}
        logged = {h: _paths(root, h)["log"].stat().st_size for h in ("a", "b")}
        extra = tmp / f"extra-vars-{label}.json"
        extra.write_text(json.dumps({**base, **change}))
        # only the config and the service (the role's tags), as an operator pushes a config
        recap = _playbook(tmp, env, extra, label, tags="config,service")
        for h in ("a", "b"):
            assert recap[h]["changed"] > 0, recap
            with open(_paths(root, h)["log"], "rb") as fh:
                fh.seek(logged[h])
                log = fh.read().decode(errors="replace")
            assert "reload refused" not in log, log[-3000:]
            with open(_paths(root, h)["config"], "rb") as fh:
                deployed = tomllib.load(fh)
            assert deployed["timeouts"]["tcp_fin_wait"] == 100, deployed
            if label == "reload":
                assert _supervisor_pid(root, h) == before[h], (h, label)
                assert f"node {h}: reloaded" in log, log[-3000:]
            else:
                assert deployed["interfaces"]["garp_count"] == 4, deployed
                assert _supervisor_pid(root, h) != before[h], (h, label, log[-3000:])
        print(f"ansible-playbook {label} run: the nodes {'reloaded' if label == 'reload' else 'restarted'}")


def _hold_across(stop_argv: list[str], tmp: Path) -> tuple[dict, float]:
    """`lab.client hold` from the client namespace through the VIP, the stop command
    run 1.5 s into it; returns the client's report and the stop's wall time."""
    ready, fault = tmp / "hold-ready.json", tmp / "hold-fault.json"
    argv = ["ip", "netns", "exec", topology.ns_name(PREFIX, "client"), sys.executable, "-m",
            "lab.client", "hold", "--host", topology.VIP, "--port", str(topology.SERVICE_PORT),
            "--conns", str(HOLD_CONNS), "--seconds", "6", "--interval", "0.02",
            "--ready-file", str(ready), "--fault-file", str(fault), "--timeout", "3.0"]
    hold = subprocess.Popen(argv, cwd=str(REPO_ROOT), env=client_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 30
        while not ready.exists():
            assert hold.poll() is None, f"hold exited early: {hold.communicate()}"
            assert time.monotonic() < end, "hold: connections not open after 30 s"
            time.sleep(0.02)
        time.sleep(1.5)
        at = time.time()
        fault.write_text(json.dumps({"at": at}))    # the client times the takeover from here
        cp = _run(stop_argv, timeout=40)
        assert cp.returncode == 0 and cp.stdout.startswith("stopped"), (cp.stdout, cp.stderr)
        out, err = hold.communicate(timeout=40)
    finally:
        if hold.poll() is None:
            hold.kill()
            hold.wait(5)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines, f"hold printed nothing (rc {hold.returncode}): {err[-2000:]}"
    return json.loads(lines[-1]), at


# ---------------------------------------------------------------------------------------


def test_ansible_deploys_the_pair_idempotently_and_it_fails_over():
    require_lab()
    _need(ANSIBLE_PLAYBOOK.exists(), f"{ANSIBLE_PLAYBOOK} is missing (make setup installs ansible-core)")
    _need(SSHD.exists(), f"{SSHD} is missing (make setup installs openssh-server)")
    _need(shutil.which("ssh") is not None and shutil.which("ssh-keygen") is not None,
          "ssh and ssh-keygen are missing (openssh-client)")
    _ensure_wheelhouse()

    tmp = Path(tempfile.mkdtemp(prefix="tandem-ansible-"))
    root = tmp / "root"
    made_privsep = False
    sshds: list[subprocess.Popen] = []
    try:
        with lab_session(PREFIX, node=False, ha=True):
            # without nodes the lab gives director a the VIP and the laddrs (it would be
            # the only one serving them); the deployed pair's elected master adds them
            topology._strip_service_addresses(PREFIX, "a")
            try:
                if not Path("/run/sshd").exists():
                    Path("/run/sshd").mkdir(mode=0o755)     # sshd's privilege-separation dir
                    made_privsep = True
                key, known_hosts = _make_keys(tmp / "ssh")
                for d in topology.DIRECTORS:
                    sshds.append(_start_sshd(tmp / "ssh", d["name"]))
                for d in topology.DIRECTORS:
                    _wait_ssh(key, known_hosts, d["front_addr"], sshds)

                env = _ansible_env(tmp, key, known_hosts)
                extra = tmp / "extra-vars.json"
                extra.write_text(json.dumps({
                    "tandem_prefix": str(root),
                    "tandem_wheelhouse": str(WHEELHOUSE),
                    "tandem_build_dir": str(tmp / "build"),
                    "tandem_source_dir": str(_snapshot_source(tmp / "src")),
                    # the inventory takes the key from the vault only (no public fallback)
                    "vault_tandem_sync_key": topology.SYNC_KEY,
                    "vault_tandem_api_token": nsutil.LAB_API_TOKEN,
                }))

                first = _playbook(tmp, env, extra, "first")
                for host in ("a", "b"):
                    assert first[host]["changed"] > 0, first

                # each node runs exactly the config the lab would give it
                for d in topology.DIRECTORS:
                    with open(_paths(root, d["name"])["config"], "rb") as fh:
                        deployed = tomllib.load(fh)
                    # the same config once read: the inventory leaves the node's defaults
                    # (schema.keys) unwritten where the lab writes them out
                    assert parse(deployed, "n.toml") == parse(
                        topology.node_config(d["name"], ha=True), "n.toml")
                    assert oct(_paths(root, d["name"])["config"].stat().st_mode & 0o777) == "0o600"

                second = _playbook(tmp, env, extra, "second")
                log2 = (tmp / "ansible-second.log").read_text()
                for host in ("a", "b"):
                    assert second[host]["changed"] == 0, (second, _changed_tasks(log2))

                # the deployed pair elected a master: a (priority 150), b backs up
                roles = _wait_roles({"a": "master", "b": "backup"}, wait=20.0)
                assert roles == {"a": "master", "b": "backup"}, roles

                _a_changed_config_reloads_or_restarts_as_the_change_needs(tmp, env, root)
                roles = _wait_roles({"a": "master", "b": "backup"}, wait=30.0)
                assert roles == {"a": "master", "b": "backup"}, roles

                # a graceful stop of the master through the supervisor, across live connections
                master_ctl = str(_paths(root, "a")["ctl"])
                res, _at = _hold_across(
                    ["ip", "netns", "exec", topology.ns_name(PREFIX, "a"), master_ctl, "stop"], tmp)
                assert res.get("connected") == HOLD_CONNS, res
                assert (res["ok"], res["reset"], res["stalled"], res["mismatch"]) == (HOLD_CONNS, 0, 0, 0), res
                roles = _wait_roles({"a": None, "b": "master"}, wait=10.0)
                assert roles == {"a": None, "b": "master"}, roles
                print(f"drill: master a stopped (tandemctl stop), b took over; {res['ok']}/{HOLD_CONNS} "
                      f"connections kept, longest silence of a connection {res.get('max_gap_ms')} ms")
            finally:
                for d in topology.DIRECTORS:
                    _stop_node(root, d["name"])
                _exit_ssh_masters(tmp / "cp")
                for p in sshds:
                    _stop_pid(p)
    finally:
        if made_privsep:
            shutil.rmtree("/run/sshd", ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
