"""Lab bookkeeping: the state file and the processes the lab started.

Everything the lab creates is recorded in ``/run/tandem-lab/{prefix}/state.json`` as soon as it
exists, so that ``down()`` can undo a half-built lab.  Processes are recorded with their PID, the
exact argv they were started with and their start time (field 22 of /proc/PID/stat); they are only
ever signalled by PID and only after checking that /proc/PID still describes the same process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RUN_ROOT = Path(os.environ.get("TANDEM_LAB_RUN_DIR", "/run/tandem-lab"))
REPO_ROOT = Path(__file__).resolve().parent.parent

_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,23}$")

# Popen objects of processes started by this Python process, so they can be reaped.
_POPENS: dict[int, subprocess.Popen] = {}


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ValueError(
            f"invalid lab prefix {prefix!r}: 1-24 characters of [A-Za-z0-9_.], starting alphanumeric"
        )
    return prefix


def state_dir(prefix: str) -> Path:
    return RUN_ROOT / check_prefix(prefix)


def state_path(prefix: str) -> Path:
    return state_dir(prefix) / "state.json"


def load_state(prefix: str) -> dict[str, Any] | None:
    try:
        with open(state_path(prefix)) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def save_state(prefix: str, state: dict[str, Any]) -> None:
    path = state_path(prefix)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as fh:
        json.dump(state, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def remove_state(prefix: str, keep_logs: bool = False) -> None:
    d = state_dir(prefix)
    if keep_logs:
        with contextlib.suppress(FileNotFoundError):
            state_path(prefix).unlink()
        return
    shutil.rmtree(d, ignore_errors=True)


def copy_logs(prefix: str, dest: str | Path) -> list[str]:
    """Copy the lab's logs (``*.log`` of its state directory) into ``dest`` (created if
    needed); returns the copies' paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return [str(shutil.copy2(log, dest / log.name))
            for log in sorted(state_dir(prefix).glob("*.log"))]


@contextlib.contextmanager
def prefix_lock(prefix: str, timeout: float = 60.0, remove: bool = False):
    """Serialise up/down of one prefix between processes.  flock is released by the kernel if
    the holder dies, so a SIGKILLed holder never blocks a restart.  With remove=True the lock
    file is unlinked before it is released; waiters notice the unlinked inode and retry."""
    path = RUN_ROOT / f".{check_prefix(prefix)}.lock"
    end = time.monotonic() + timeout
    while True:
        RUN_ROOT.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # RUN_ROOT removed by a concurrent down(): retry
            if time.monotonic() >= end:
                raise
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= end:
                raise TimeoutError(f"lab {prefix!r} is locked by another process ({path})")
            time.sleep(0.05)
            continue
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        if remove:
            with contextlib.suppress(OSError):
                path.unlink()
            with contextlib.suppress(OSError):
                RUN_ROOT.rmdir()  # only if empty
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# processes


def _read_cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    if not raw:
        return []
    return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]


def _read_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, starttime in clock ticks) of a process, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    rest = data[data.rfind(")") + 2 :].split()
    try:
        return rest[0], int(rest[19])
    except (IndexError, ValueError):
        return None


def _reap(pid: int) -> None:
    p = _POPENS.get(pid)
    if p is not None:
        if p.poll() is not None:
            _POPENS.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def process_matches(rec: dict[str, Any]) -> bool:
    """True if rec's PID is alive (not a zombie) and is still the process that was recorded."""
    try:
        pid = int(rec["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    if pid <= 1:
        return False
    _reap(pid)
    st = _read_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    if rec.get("starttime") is not None and st[1] != rec["starttime"]:
        return False
    p = _POPENS.get(pid)
    if p is not None and p.returncode is None:
        # our own unreaped child: the PID cannot have been reused (and right after the start
        # its cmdline may still be empty while it execs)
        return True
    cmdline = _read_cmdline(pid)
    if not cmdline:
        return False
    accepted = [rec.get("argv"), rec.get("cmd"), rec.get("cmdline_seen")]
    if any(isinstance(a, list) and a and cmdline == a for a in accepted):
        return True
    # a script started through its "#!interpreter" line: [interpreter, script, args...]
    cmd = rec.get("cmd")
    return (
        isinstance(cmd, list)
        and len(cmdline) == len(cmd) + 1
        and cmdline[1:] == cmd
        and os.path.basename(cmdline[0]).startswith("python")
    )


def start_process(
    ns: str, name: str, cmd: list[str], log_path: Path, env_extra: dict[str, str] | None = None
) -> dict[str, Any]:
    """Start ``cmd`` inside network namespace ``ns`` (via ``ip netns exec``, which execs the
    command in place, so the PID stays the same) in its own session, output to log_path."""
    argv = ["ip", "netns", "exec", ns, *cmd]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env["PYTHONUNBUFFERED"] = "1"
    if env_extra:
        env.update(env_extra)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(REPO_ROOT),
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    _POPENS[proc.pid] = proc
    st = _read_stat(proc.pid)
    return {
        "name": name,
        "ns": ns,
        "pid": proc.pid,
        "argv": argv,
        "cmd": list(cmd),
        "starttime": st[1] if st else None,
        "log": str(log_path),
    }


def note_cmdline(rec: dict[str, Any]) -> None:
    """Record the command line the running process shows now (after its exec)."""
    if process_matches(rec):
        rec["cmdline_seen"] = _read_cmdline(int(rec["pid"]))


def process_exited(rec: dict[str, Any]) -> int | None:
    """Exit code if a process started by this Python process has exited, else None."""
    p = _POPENS.get(int(rec.get("pid", 0)))
    if p is None:
        return None if process_matches(rec) else -1
    return p.poll()


def stop_process(rec: dict[str, Any], term_wait: float = 3.0, kill_wait: float = 2.0) -> str:
    """SIGTERM, then SIGKILL after term_wait; only while /proc/PID still matches rec.

    Returns 'not-running', 'terminated', 'killed' or 'survived'. Never raises."""
    try:
        if not process_matches(rec):
            return "not-running"
        pid = int(rec["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + term_wait
        while time.monotonic() < end:
            if not process_matches(rec):
                return "terminated"
            time.sleep(0.02)
        if process_matches(rec):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + kill_wait
        while time.monotonic() < end:
            if not process_matches(rec):
                return "killed"
            time.sleep(0.02)
        return "survived"
    except Exception as exc:  # never raise from teardown
        print(f"lab: stopping {rec!r}: {exc}", file=sys.stderr)
        return "error"


def tail(path: str | Path, n: int = 20) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-n:])
