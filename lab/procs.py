"""The lab's processes: the real servers' echo servers and the directors' nodes.

Each is started inside its namespace with ``ip netns exec`` and recorded in the state file
(lab.state) before anything waits on it; start-up is bounded and a process that dies
while starting is reported with the tail of its log.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from . import nsutil
from . import state as st
from .plan import API_PORT, PROXY_RS_PORT, REAL_SERVERS, RS_PORT, director, ns_name


def record(state: dict[str, Any], rec: dict[str, Any]) -> None:
    """Add a started process to the state, dropping earlier records of the same name whose
    process is gone (a node restarted after a kill): the state lists what runs now, not
    every PID the lab ever had. A record whose process still runs is kept, so it is
    still stopped by ``down``."""
    state["processes"] = [
        p for p in state.get("processes") or []
        if not (isinstance(p, dict) and p.get("name") == rec["name"] and not st.process_matches(p))
    ]
    state["processes"].append(rec)


def find(state: dict[str, Any], name: str) -> dict[str, Any] | None:
    recs = [p for p in state.get("processes") or [] if isinstance(p, dict) and p.get("name") == name]
    return recs[-1] if recs else None


class Echo(NamedTuple):
    """One echo server (lab.echo) to start: it answers WHOAMI with `name`, in namespace
    `ns`, on `host` (None: every address), recorded as `record` with its output in `log`
    (a file of the lab's state directory)."""
    name: str
    ns: str
    host: str | None
    record: str
    log: str


def start_echoes(prefix: str, state: dict[str, Any], echoes: list[Echo], port: int,
                 wait: float, what: str = "echo server") -> None:
    """Start each echo server on `port`, recorded in the lab's state (``down`` stops it), then
    wait (bounded by `wait` in all) until each answers WHOAMI with its name."""
    d = st.state_dir(prefix)
    for e in echoes:
        cmd = [sys.executable, "-m", "lab.echo", "--name", e.name, "--port", str(port)]
        record(state, st.start_process(e.ns, e.record, cmd + (["--host", e.host] if e.host else []),
                                       d / e.log))
        st.save_state(prefix, state)
    end = time.monotonic() + wait
    for e in echoes:
        while True:
            try:
                reply = nsutil.tcp_whoami(e.ns, e.host or "127.0.0.1", port, timeout=0.5)
                if reply.split(" ")[0] == e.name:
                    break
            except OSError:
                pass
            if time.monotonic() >= end:
                raise TimeoutError(f"{what} {e.name} not answering after {wait}s")
            time.sleep(0.05)


def start_echo_servers(prefix: str, state: dict[str, Any], wait: float) -> None:
    d = st.state_dir(prefix)
    for r in REAL_SERVERS:
        ns = ns_name(prefix, r["name"])
        cmd = [sys.executable, "-m", "lab.echo", "--name", r["name"], "--port", str(RS_PORT),
               "--proxy-port", str(PROXY_RS_PORT)]
        record(state, st.start_process(ns, f"echo-{r['name']}", cmd, d / f"{r['name']}.log"))
        st.save_state(prefix, state)

    pending = {r["name"] for r in REAL_SERVERS}
    end = time.monotonic() + wait
    last_err: dict[str, str] = {}
    while pending:
        for name in sorted(pending):
            rec = find(state, f"echo-{name}")
            if st.process_exited(rec) is not None:
                raise RuntimeError(
                    f"echo server {name} exited during start-up; log {rec['log']}:\n"
                    + st.tail(rec["log"])
                )
            try:
                reply = nsutil.tcp_whoami(ns_name(prefix, name), "127.0.0.1", RS_PORT, timeout=0.5)
                if reply.split(" ")[0] == name:
                    pending.discard(name)
                else:
                    last_err[name] = f"unexpected reply {reply!r}"
            except OSError as exc:
                last_err[name] = repr(exc)
        if not pending:
            break
        if time.monotonic() >= end:
            raise TimeoutError(f"echo servers not accepting after {wait}s: {last_err}")
        time.sleep(0.05)


def tandem_cmd(config_path: Path) -> list[str]:
    exe = Path(sys.executable).parent / "tandem"
    if exe.exists():
        return [str(exe), "node", "--config", str(config_path)]
    # console script not installed (no editable install yet): call the entry point directly
    return [
        sys.executable,
        "-c",
        "import sys; sys.argv[0] = 'tandem'; from tandem.cli import main; sys.exit(main())",
        "node",
        "--config",
        str(config_path),
    ]


def start_node(prefix: str, state: dict[str, Any], config_path: Path, wait: float,
               name: str = "a") -> dict[str, Any]:
    """Start director `name`'s node and wait (bounded) until its API answers /status."""
    ns = ns_name(prefix, name)
    rec = st.start_process(ns, f"node-{name}", tandem_cmd(config_path),
                           st.state_dir(prefix) / f"{name}.log")
    record(state, rec)
    st.save_state(prefix, state)
    host = director(name)["front_addr"]
    end = time.monotonic() + wait
    last = ""
    while True:
        rc = st.process_exited(rec)
        if rc is not None:
            raise RuntimeError(
                f"node {name} exited with {rc} during start-up; log {rec['log']}:\n" + st.tail(rec["log"])
            )
        try:
            status, _body = nsutil.http_get(ns, host, API_PORT, "/status", timeout=0.5)
            if status == 200:
                st.note_cmdline(rec)
                st.save_state(prefix, state)
                return rec
            last = f"HTTP {status}"
        except Exception as exc:  # noqa: BLE001 - not ready yet (refused, reset, bad reply)
            last = repr(exc)
        if time.monotonic() >= end:
            raise TimeoutError(
                f"node {name}: GET http://{host}:{API_PORT}/status not OK after {wait}s ({last}); "
                f"log {rec['log']}:\n" + st.tail(rec["log"])
            )
        time.sleep(0.1)


def node_status(prefix: str, name: str, timeout: float = 1.0) -> dict[str, Any]:
    """GET /status of director `name`'s node from inside its namespace."""
    host = director(name)["front_addr"]
    code, body = nsutil.http_get(ns_name(prefix, name), host, API_PORT, "/status", timeout=timeout)
    if code != 200:
        raise OSError(f"node {name}: HTTP {code}")
    return json.loads(body)


def wait_role(prefix: str, name: str, role: str, wait: float = 10.0) -> dict[str, Any]:
    """Poll (bounded) until director `name` reports `role`."""
    end = time.monotonic() + wait
    last: Any = None
    while time.monotonic() < end:
        try:
            last = node_status(prefix, name)
            if last.get("role") == role:
                return last
        except Exception as exc:  # noqa: BLE001 - restarting, links down, ...
            last = repr(exc)
        time.sleep(0.05)
    raise TimeoutError(f"node {name} not {role} after {wait}s (last: {last})")
