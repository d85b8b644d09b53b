"""The standard toolchain pair (nftables FULLNAT + keepalived VRRPv3 + conntrackd FTFW) on the
lab's namespaces, drilled exactly as tandem's pair is.

``up(prefix)`` builds the lab's topology without tandem (client, router, switch, the two
directors, the real servers and their echo servers: lab.topology), loads the FULLNAT rules
into both directors, and starts one conntrackd and one keepalived per director, each with
its own files under the lab's state directory (lab.toolchain_conf).  Every daemon is
recorded in the lab's state like tandem's nodes, so ``down(prefix)`` (lab.topology.down)
stops them by PID and removes the namespaces and the files.

``ToolchainPair(prefix)`` is what lab.drill.run drives: the same traffic tool from the same
client namespace, the same figures (takeover, longest silence, survived / reset / stalled).
Its role changes come from keepalived's notify hook.  Its faults:

- ``kill``: both links down, then SIGKILL to keepalived (parent and VRRP child) and to
  conntrackd (a crashed box: nothing it sends after the fault reaches anyone);
- ``restore``: the addresses the dead keepalived left are stripped, conntrack's table is
  flushed (a rebooted box starts empty), the links come up, conntrackd and keepalived start
  again; the director with the higher priority preempts, as tandem's lab pair does.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from . import netns, procs, topology
from . import state as st
from .drill_pairs import LabPair
from .plan import DIRECTOR_NAMES, PREFERRED, ns_name
from .toolchain_conf import (keepalived_conf, conntrackd_conf, nft_ruleset, notify_script,
                             parse_states, paths)

#: the Debian packages' programs (make setup installs them)
PROGRAMS = ("keepalived", "conntrackd", "conntrack", "nft")
#: bounded waits: a daemon's control socket answering, a role being reached
START_WAIT = 10.0
ROLE_WAIT = 10.0


def programs() -> dict[str, str]:
    """Where each program is; RuntimeError naming the missing ones."""
    found = {p: shutil.which(p) or shutil.which(p, path="/usr/sbin:/sbin") for p in PROGRAMS}
    missing = [p for p, path in found.items() if not path]
    if missing:
        raise RuntimeError(f"the toolchain pair needs {', '.join(missing)} (make setup installs them)")
    return {p: str(path) for p, path in found.items()}


def _run(ns: str, *argv: str, check: bool = True, input: str | None = None,
         timeout: float = 10.0) -> subprocess.CompletedProcess:
    cp = subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, capture_output=True,
                        text=True, timeout=timeout)
    if check and cp.returncode:
        raise RuntimeError(f"{' '.join(argv)} in {ns} exited {cp.returncode}: {cp.stderr.strip()[-500:]}")
    return cp


def workdir(prefix: str) -> Path:
    """The pair's files: inside the lab's own state directory, so ``down`` removes them."""
    return st.state_dir(prefix) / "toolchain"


def _write_files(prefix: str, name: str, advert_interval: float, bins: dict[str, str]) -> dict[str, Path]:
    p = paths(workdir(prefix), name)
    p["ka_tmp"].mkdir(parents=True, exist_ok=True)
    p["nft"].write_text(nft_ruleset())
    p["ctd_conf"].write_text(conntrackd_conf(name, p))
    p["ka_conf"].write_text(keepalived_conf(name, p, advert_interval))
    p["notify"].write_text(notify_script(p, bins["conntrackd"]))
    p["notify"].chmod(0o700)
    p["states"].touch()
    return p


def versions() -> dict[str, str]:
    """The first line each program prints about its version (for the report)."""
    out = {}
    for prog, flag in (("keepalived", "--version"), ("conntrackd", "-v"), ("nft", "--version")):
        cp = subprocess.run([programs()[prog], flag], capture_output=True, text=True, timeout=10)
        lines = [ln for ln in (cp.stdout + cp.stderr).splitlines() if ln.strip()]
        out[prog] = lines[0].split(". Licensed")[0].strip() if lines else ""
    return out


def _ctd_answers(ns: str, p: dict[str, Path], ctd: str) -> bool:
    return _run(ns, ctd, "-C", str(p["ctd_conf"]), "-s", check=False).returncode == 0


def _start_conntrackd(prefix: str, state: dict[str, Any], name: str, bins: dict[str, str]) -> None:
    ns, p = ns_name(prefix, name), paths(workdir(prefix), name)
    # a SIGKILLed conntrackd leaves its lock file, and a new one refuses to start on it
    p["ctd_lock"].unlink(missing_ok=True)
    rec = st.start_process(ns, f"conntrackd-{name}", [bins["conntrackd"], "-C", str(p["ctd_conf"])],
                           st.state_dir(prefix) / f"conntrackd-{name}.out.log")
    procs.record(state, rec)
    st.save_state(prefix, state)
    end = time.monotonic() + START_WAIT
    while not _ctd_answers(ns, p, bins["conntrackd"]):
        if st.process_exited(rec) is not None or time.monotonic() > end:
            raise RuntimeError(f"conntrackd {name} did not start; log {p['ctd_log']}:\n"
                               + st.tail(p["ctd_log"]) + st.tail(rec["log"]))
        time.sleep(0.05)


def _start_keepalived(prefix: str, state: dict[str, Any], name: str, bins: dict[str, str]) -> None:
    ns, p = ns_name(prefix, name), paths(workdir(prefix), name)
    cmd = [bins["keepalived"], "-n", "-l", "-D", "-G", "-P", "-f", str(p["ka_conf"]),
           "-p", str(p["ka_pid"]), "-r", str(p["ka_vrrp_pid"])]
    rec = st.start_process(ns, f"keepalived-{name}", cmd,
                           st.state_dir(prefix) / f"keepalived-{name}.log",
                           env_extra={"TMPDIR": str(p["ka_tmp"])})
    procs.record(state, rec)
    st.save_state(prefix, state)


def up(prefix: str = "tbtc", advert_interval: float = 0.1) -> dict[str, Any]:
    """Build the lab without tandem and start the toolchain pair on it; returns the lab's
    description.  On failure everything is removed again and the exception re-raised."""
    bins = programs()
    info = topology.up(prefix, node=False)
    try:
        with st.prefix_lock(prefix):
            state = st.load_state(prefix) or {}
            # without the pair the lab puts the VIP and laddrs on the preferred director;
            # here keepalived adds them where it elects
            netns.strip_service_addresses(prefix, PREFERRED)
            state["toolchain"] = {"advert_interval": advert_interval, "workdir": str(workdir(prefix))}
            for name in DIRECTOR_NAMES:
                p = _write_files(prefix, name, advert_interval, bins)
                _run(ns_name(prefix, name), bins["nft"], "-f", str(p["nft"]))
                _start_conntrackd(prefix, state, name, bins)
            for name in DIRECTOR_NAMES:
                _start_keepalived(prefix, state, name, bins)
            st.save_state(prefix, state)
        for name in DIRECTOR_NAMES:
            wait_role(prefix, name, "master" if name == PREFERRED else "backup", ROLE_WAIT)
        info["toolchain"] = dict(state["toolchain"])
        return info
    except BaseException:
        topology.down(prefix, keep_logs=True)
        raise


def down(prefix: str = "tbtc") -> dict[str, Any]:
    """Stop the daemons (by their recorded PIDs), remove the namespaces and the files."""
    return topology.down(prefix)


@contextlib.contextmanager
def session(prefix: str = "tbtc", advert_interval: float = 0.1) -> Iterator[dict[str, Any]]:
    try:
        yield up(prefix, advert_interval)
    finally:
        res = down(prefix)
        if res.get("errors"):
            print(f"lab.toolchain: down {prefix}: {res['errors']}")


def _record(state: dict[str, Any], what: str, name: str) -> dict[str, Any] | None:
    return procs.find(state, f"{what}-{name}")


def status(prefix: str, name: str) -> dict[str, Any]:
    """The director's role as its notify hook logged it, and its role changes; OSError when
    its keepalived is not running (a killed director answers nothing, like a killed node)."""
    state = st.load_state(prefix) or {}
    rec = _record(state, "keepalived", name)
    if rec is None or not st.process_matches(rec):
        raise OSError(f"keepalived {name} is not running")
    changes = parse_states(paths(workdir(prefix), name)["states"].read_text())
    return {"role": changes[-1]["to"] if changes else "init", "role_changes": changes}


def wait_role(prefix: str, name: str, role: str, wait: float = ROLE_WAIT) -> dict[str, Any]:
    end = time.monotonic() + wait
    last: Any = None
    while time.monotonic() < end:
        try:
            last = status(prefix, name)
            if last["role"] == role:
                return last
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise TimeoutError(f"toolchain director {name} not {role} after {wait}s (last: {last})")


def _vrrp_child(p: dict[str, Path]) -> int | None:
    """keepalived's VRRP child (its pid file), checked to be a keepalived process."""
    try:
        pid = int(p["ka_vrrp_pid"].read_text().split()[0])
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv0 = fh.read().split(b"\0")[0]
    except (OSError, ValueError, IndexError):
        return None
    return pid if os.path.basename(argv0.decode(errors="replace")) == "keepalived" else None


def _kill(prefix: str, state: dict[str, Any], name: str, out: dict[str, Any]) -> None:
    p = paths(workdir(prefix), name)
    child = _vrrp_child(p)
    recs = [r for r in (_record(state, "keepalived", name), _record(state, "conntrackd", name))
            if r is not None and st.process_matches(r)]
    for r in recs:
        os.kill(int(r["pid"]), signal.SIGKILL)
    if child is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    out["killed_pids"] = [int(r["pid"]) for r in recs] + ([child] if child else [])
    end = time.monotonic() + 5.0
    while any(st.process_matches(r) for r in recs) and time.monotonic() < end:
        time.sleep(0.005)


def _restore(prefix: str, state: dict[str, Any], name: str, out: dict[str, Any],
             mark: Callable[[float], None]) -> None:
    bins = programs()
    ka = _record(state, "keepalived", name)
    if ka is not None and st.process_matches(ka):
        mark(netns.set_links(prefix, name, True))
        return
    netns.strip_service_addresses(prefix, name)
    _run(ns_name(prefix, name), bins["conntrack"], "-F", check=False)
    mark(netns.set_links(prefix, name, True))
    ctd = _record(state, "conntrackd", name)
    if ctd is None or not st.process_matches(ctd):
        _start_conntrackd(prefix, state, name, bins)
    _start_keepalived(prefix, state, name, bins)
    out["restarted"] = True


FAULTS = ("kill", "restore")


def fault(prefix: str, name: str, kind: str,
          on_at: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Inject `kind` into director `name`; returns what was done, with the wall-clock time
    of the fault as `at` (`on_at(at)` is called as soon as it is known)."""
    if kind not in FAULTS:
        raise ValueError(f"fault kind must be one of {', '.join(FAULTS)}, not {kind!r}")
    out: dict[str, Any] = {"director": name, "fault": kind}

    def mark(at: float) -> None:
        out["at"] = at
        if on_at is not None:
            on_at(at)

    with st.prefix_lock(prefix):
        state = st.load_state(prefix)
        if not state or "toolchain" not in state:
            raise RuntimeError(f"no toolchain pair lab {prefix!r} is up")
        if kind == "kill":
            mark(netns.set_links(prefix, name, False))
            _kill(prefix, state, name, out)
        else:
            _restore(prefix, state, name, out, mark)
        st.save_state(prefix, state)
    return out


def restore(prefix: str, name: str = PREFERRED, wait: float = ROLE_WAIT) -> None:
    """Put the pair back as it started (`name` restored and master again, the other backup)."""
    fault(prefix, name, "restore")
    wait_role(prefix, name, "master", wait)
    for other in DIRECTOR_NAMES:
        if other != name:
            wait_role(prefix, other, "backup", wait)


def conntrackd_dump(prefix: str, name: str, which: str = "external") -> list[str]:
    """conntrackd's cache of director `name` as it lists it (`-e` external: the peer's
    states; `-i` internal: its own), one line per entry."""
    bins = programs()
    p = paths(workdir(prefix), name)
    flag = {"external": "-e", "internal": "-i"}[which]
    cp = _run(ns_name(prefix, name), bins["conntrackd"], "-C", str(p["ctd_conf"]), flag)
    return [ln for ln in cp.stdout.splitlines() if ln.strip()]


def conntrack_list(prefix: str, name: str) -> list[str]:
    """The kernel's conntrack table of director `name` (`conntrack -L`), one line per entry."""
    cp = _run(ns_name(prefix, name), programs()["conntrack"], "-L", check=False)
    return [ln for ln in cp.stdout.splitlines() if ln.strip()]


class ToolchainPair(LabPair):
    """The toolchain pair as lab.drill.run drives it: the lab's client and VIP, the toolchain's
    roles and faults."""
    faults = FAULTS

    def __init__(self, prefix: str = "tbtc") -> None:
        super().__init__(prefix)

    def check(self) -> None:
        state = st.load_state(self.prefix)
        if not state or "toolchain" not in state:
            raise RuntimeError(f"no toolchain pair lab {self.prefix!r} is up (lab.toolchain.up first)")

    def status(self, name: str) -> dict:
        return status(self.prefix, name)

    def fault(self, name: str, kind: str, on_at=None) -> dict:
        return fault(self.prefix, name, kind, on_at=on_at)
