"""What the lab's Ansible tests share: an sshd in each director namespace, and
ansible-playbook run from the router namespace against them, over real SSH.

The host itself is not on the lab network, so the controller runs in the router
namespace, which reaches every director.  Each sshd listens on its director's address
with a host key made for the test, and root logs in with a client key made for the test;
nothing comes from ~/.ssh, ~/.ansible.cfg or /etc/ansible.  `sshd_per_director` starts
them and stops them (by PID) with the SSH connection masters Ansible left.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import pytest

from lab.testing import REPO_ROOT, client_env

VENV_BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = VENV_BIN / "ansible-playbook"
SSHD = Path("/usr/sbin/sshd")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
PLAYBOOK = REPO_ROOT / "ansible" / "playbook.yml"
WHEELHOUSE = REPO_ROOT / ".venv" / "share" / "tandem" / "wheelhouse"
PLAYBOOK_TIMEOUT = 240.0
RECAP_RE = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)"
    r"\s+ignored=(?P<ignored>\d+)", re.M)


class Host(NamedTuple):
    """A director the playbook deploys: its inventory name, namespace and address."""
    name: str
    ns: str
    addr: str


class Controller(NamedTuple):
    """What a playbook run needs: the router namespace it runs in, its environment, and
    the scratch directory (logs, SSH control sockets)."""
    router_ns: str
    env: dict[str, str]
    tmp: Path


def need(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("TANDEM_REQUIRE_LAB") == "1":
        pytest.fail(f"TANDEM_REQUIRE_LAB=1 but {why}", pytrace=False)
    pytest.skip(why)


def need_ansible_and_ssh() -> None:
    need(ANSIBLE_PLAYBOOK.exists(), f"{ANSIBLE_PLAYBOOK} is missing (make setup installs ansible-core)")
    need(SSHD.exists(), f"{SSHD} is missing (make setup installs openssh-server)")
    need(shutil.which("ssh") is not None and shutil.which("ssh-keygen") is not None,
         "ssh and ssh-keygen are missing (openssh-client)")


def run(argv: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def ensure_wheelhouse() -> None:
    """The wheels of tandem's dependencies the targets install from (they reach no
    package index); `make setup` builds them, and so does this, once."""
    if (WHEELHOUSE / ".complete").exists():
        return
    cp = run([str(REPO_ROOT / "ansible" / "wheelhouse.sh"), str(WHEELHOUSE), sys.executable],
             timeout=600)
    assert cp.returncode == 0, f"building the wheelhouse failed:\n{cp.stdout}\n{cp.stderr}"


def snapshot_source(dest: Path) -> Path:
    """A copy of the checkout to deploy from: the tree may be edited while the test
    runs, and the second run must see the same sources as the first."""
    shutil.copytree(REPO_ROOT, dest, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "__pycache__", "*.pyc", "build", "dist", "*.egg-info", ".pytest_cache",
        ".hypothesis", ".ansible", "tests", "bench", "ansible"))
    return dest


# ---------------------------------------------------------------------------------------
# sshd per director namespace


def _make_keys(ssh_dir: Path, hosts: list[Host]) -> tuple[Path, Path]:
    """A client key (authorized for root) and one host key per director; known_hosts."""
    ssh_dir.mkdir(mode=0o700)
    key = ssh_dir / "id_ed25519"
    cp = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tandem-ansible-test",
              "-f", str(key)], timeout=30)
    assert cp.returncode == 0, cp.stderr
    (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    known = []
    for h in hosts:
        hdir = ssh_dir / h.name
        hdir.mkdir(mode=0o700)
        hkey = hdir / "ssh_host_ed25519_key"
        cp = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"host-{h.name}",
                  "-f", str(hkey)], timeout=30)
        assert cp.returncode == 0, cp.stderr
        kind, blob = hkey.with_suffix(".pub").read_text().split()[:2]
        known.append(f"{h.addr} {kind} {blob}")
        (hdir / "sshd_config").write_text("\n".join([
            f"ListenAddress {h.addr}:22",
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


def _start_sshd(ssh_dir: Path, host: Host) -> subprocess.Popen:
    cfg = ssh_dir / host.name / "sshd_config"
    cp = run([str(SSHD), "-t", "-f", str(cfg)], timeout=30)
    assert cp.returncode == 0, f"sshd -t: {cp.stderr}"
    log = open(ssh_dir / host.name / "sshd.log", "ab")
    try:
        # ip netns exec execs sshd: the PID is sshd's own
        return subprocess.Popen(["ip", "netns", "exec", host.ns, str(SSHD), "-D", "-e", "-f", str(cfg)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    finally:
        log.close()


def stop_pid(proc: subprocess.Popen, wait: float = 5.0) -> None:
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
            run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "tandem-ansible-test"], timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            pass


def _wait_ssh(key: Path, known_hosts: Path, router_ns: str, addr: str,
              procs: list[subprocess.Popen], wait: float = 20.0) -> None:
    end = time.monotonic() + wait
    last = ""
    while time.monotonic() < end:
        for p in procs:
            assert p.poll() is None, f"sshd exited with {p.returncode}"
        try:
            cp = run(["ip", "netns", "exec", router_ns, "ssh", "-o", "ControlMaster=no",
                      "-o", "ControlPath=none", *_ssh_argv(key, known_hosts), f"root@{addr}", "true"],
                     timeout=10)
            if cp.returncode == 0:
                return
            last = cp.stderr.strip()
        except subprocess.TimeoutExpired:
            last = "ssh timed out"
        time.sleep(0.2)
    raise AssertionError(f"ssh root@{addr} from the router namespace failed for {wait}s: {last}")


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


@contextlib.contextmanager
def sshd_per_director(tmp: Path, router_ns: str, hosts: list[Host]) -> Iterator[Controller]:
    """An sshd in each director's namespace, each answering root's test key from the
    router namespace; the controller to run playbooks with.  On exit the SSH masters
    and every sshd (by PID) are stopped, and sshd's privilege-separation directory is
    removed if this made it."""
    made_privsep = False
    sshds: list[subprocess.Popen] = []
    try:
        if not Path("/run/sshd").exists():
            Path("/run/sshd").mkdir(mode=0o755)     # sshd's privilege-separation dir
            made_privsep = True
        key, known_hosts = _make_keys(tmp / "ssh", hosts)
        for h in hosts:
            sshds.append(_start_sshd(tmp / "ssh", h))
        for h in hosts:
            _wait_ssh(key, known_hosts, router_ns, h.addr, sshds)
        yield Controller(router_ns, _ansible_env(tmp, key, known_hosts), tmp)
    finally:
        _exit_ssh_masters(tmp / "cp")
        for p in sshds:
            stop_pid(p)
        if made_privsep:
            shutil.rmtree("/run/sshd", ignore_errors=True)


# ---------------------------------------------------------------------------------------
# ansible-playbook in the router namespace


def playbook(ctl: Controller, inventory: Path, extra: Path, label: str, hosts: set[str],
             tags: str | None = None) -> dict[str, dict[str, int]]:
    """Run the site playbook against `inventory`; its recap per host (every host in
    `hosts`, none failed or unreachable).  The output is kept in ansible-LABEL.log."""
    argv = ["ip", "netns", "exec", ctl.router_ns, str(ANSIBLE_PLAYBOOK),
            "-i", str(inventory), str(PLAYBOOK), "-e", f"@{extra}"]
    if tags:
        argv += ["--tags", tags]
    t0 = time.monotonic()
    cp = run(argv, timeout=PLAYBOOK_TIMEOUT, cwd=str(REPO_ROOT), env=ctl.env)
    out = cp.stdout + cp.stderr
    (ctl.tmp / f"ansible-{label}.log").write_text(out)
    recap = {m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
             for m in RECAP_RE.finditer(cp.stdout)}
    lines = [m.group(0) for m in RECAP_RE.finditer(cp.stdout)]
    print(f"ansible-playbook {label} run ({time.monotonic() - t0:.1f} s, rc {cp.returncode}):")
    for ln in lines:
        print("  " + ln)
    assert cp.returncode == 0 and set(recap) == hosts, (
        f"ansible-playbook ({label}) failed, rc {cp.returncode}:\n{out[-6000:]}")
    for host, r in recap.items():
        assert r["failed"] == 0 and r["unreachable"] == 0, f"{label}: {host}: {r}\n{out[-4000:]}"
    return recap


def changed_tasks(log: str) -> list[str]:
    """The tasks a run reported as changed (for a readable failure)."""
    out, task = [], ""
    for ln in log.splitlines():
        if ln.startswith(("TASK [", "RUNNING HANDLER [")):
            task = ln.split("[", 1)[1].rsplit("]", 1)[0]
        elif ln.startswith("changed:"):
            out.append(f"{task}: {ln}")
    return out


# ---------------------------------------------------------------------------------------
# the deployed nodes (each director's directories under the test's tandem_prefix, named
# as the lab inventories name them: opt/tandem-NAME, etc/tandem-NAME, ...)


def deployed_paths(root: Path, name: str) -> dict[str, Path]:
    return {
        "ctl": root / "opt" / f"tandem-{name}" / "bin" / "tandemctl",
        "config": root / "etc" / f"tandem-{name}" / f"{name}.toml",
        "pid": root / "run" / f"tandem-{name}" / "tandem.pid",
        "log": root / "var" / "log" / f"tandem-{name}" / "tandem.log",
    }


def supervisor_pid(root: Path, name: str) -> int:
    return int(deployed_paths(root, name)["pid"].read_text().split()[0])


def stop_deployed_node(root: Path, name: str, ns: str) -> None:
    """Stop a deployed node: its supervisor script, else SIGKILL to the process group
    of the PID in its pid file (the supervisor leads its own session)."""
    p = deployed_paths(root, name)
    if p["ctl"].exists():
        try:
            run(["ip", "netns", "exec", ns, str(p["ctl"]), "stop"], timeout=40)
        except (subprocess.TimeoutExpired, OSError):
            pass
    try:
        pid = int(p["pid"].read_text().split()[0])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return
    if str(p["ctl"]).encode() in argv and b"supervise" in argv:
        os.killpg(pid, signal.SIGKILL)


def hold_across(stop_argv: list[str], tmp: Path, client_ns: str, vip: str, port: int,
                conns: int, timeout: float = 3.0) -> dict:
    """`lab.client hold` from the client namespace through the VIP, the stop command
    run 1.5 s into it (it must say `stopped`); returns the client's report (an echo not
    back within `timeout` counts the connection stalled)."""
    ready, fault = tmp / "hold-ready.json", tmp / "hold-fault.json"
    argv = ["ip", "netns", "exec", client_ns, sys.executable, "-m",
            "lab.client", "hold", "--host", vip, "--port", str(port),
            "--conns", str(conns), "--seconds", "6", "--interval", "0.02",
            "--ready-file", str(ready), "--fault-file", str(fault), "--timeout", str(timeout)]
    hold = subprocess.Popen(argv, cwd=str(REPO_ROOT), env=client_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 30
        while not ready.exists():
            assert hold.poll() is None, f"hold exited early: {hold.communicate()}"
            assert time.monotonic() < end, "hold: connections not open after 30 s"
            time.sleep(0.02)
        time.sleep(1.5)
        fault.write_text(json.dumps({"at": time.time()}))   # the client times the takeover from here
        cp = run(stop_argv, timeout=40)
        assert cp.returncode == 0 and cp.stdout.startswith("stopped"), (cp.stdout, cp.stderr)
        out, err = hold.communicate(timeout=40)
    finally:
        if hold.poll() is None:
            hold.kill()
            hold.wait(5)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines, f"hold printed nothing (rc {hold.returncode}): {err[-2000:]}"
    return json.loads(lines[-1])
