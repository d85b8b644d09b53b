"""Two trees' nodes side by side under conn_rate's load: the node's CPU per new TCP
connection (user + system, from /proc), alternating the trees in one lab.

    flock /tmp/tandem-lab.lock .venv/bin/python -m bench.conn_ab BEFORE_TREE AFTER_TREE [ROUNDS]

Each tree is a checkout with its own `make setup` (.venv/bin/tandem); both nodes run the
same configuration (this tree's conn_rate services), pinned to the director's CPU, one at a
time, for SECONDS of the C generator each, in the order A B, B A, A B, ... so a change in
the box's load hits both.  The rate follows the share of its core the node gets; the CPU
per connection does not, except for the two regimes docs/benchmarks.md describes (the
load's CPU busy ~30 % or ~92 %), so the load's CPU share is printed beside each round.
One JSON line per round, then each side's sorted figures.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import cgen, common, conn_rate
from lab import nodeconf, nsutil, topology

SECONDS = 4.0
API = ("198.18.0.11", 9100)      # director a's front address and the lab's API port


def _cpu(pid: int) -> tuple[float, float]:
    """(user + system, user) CPU seconds of process pid so far."""
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return (int(v[11]) + int(v[12])) / hz, int(v[11]) / hz


def _start(tree: str, cfg: Path, ns: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=tree, PYTHONUNBUFFERED="1")
    argv = ["ip", "netns", "exec", ns, f"{tree}/.venv/bin/tandem", "node", "--config", str(cfg)]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open(log, "ab"),
                         stderr=subprocess.STDOUT, cwd=tree, env=env, start_new_session=True)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        if p.poll() is not None:
            raise RuntimeError(f"node of {tree} exited: see {log}")
        try:
            if nsutil.http_get(ns, *API, "/status", timeout=0.5)[0] == 200:
                cgen.pin(p.pid, cgen.DIRECTOR_CPU)
                return p
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    _stop(p)
    raise TimeoutError(f"node of {tree}: no /status within 20 s (see {log})")


def _stop(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def run(trees: dict[str, str], rounds: int, workdir: Path) -> list[dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "a.toml"
    nodeconf.write_config(cfg_path, nodeconf.node_config("a", extra={"services": conn_rate._services()}))
    names = list(trees)
    out, servers = [], []
    prefix = conn_rate.PREFIX
    with common.lab(prefix, node=False, ha=False, config_extra={"services": conn_rate._services()}):
        a_ns, client_ns = common.ns(prefix, "a"), common.ns(prefix, "client")
        for ns in (a_ns, client_ns):
            nsutil.set_sysctls(ns, {"net.ipv4.tcp_tw_reuse": 1,
                                    "net.ipv4.ip_local_port_range": "10000 65000"})
        try:
            for r in topology.REAL_SERVERS:
                servers.append(cgen.start(common.ns(prefix, r["name"]),
                                          [str(cgen.binary()), "serve", "--port", str(conn_rate.PORT),
                                           "--name", r["name"], "--seconds", "900"], cpu=cgen.LOAD_CPU))
            time.sleep(1)
            for i in range(rounds):
                for side in (names if i % 2 == 0 else names[::-1]):
                    p = _start(trees[side], cfg_path, a_ns, workdir / f"node-{side}.log")
                    try:
                        c0, s0 = _cpu(p.pid), common.cpu_times()
                        g = cgen.run_gen(client_ns, "tcp", dst=topology.VIP, port=80,
                                         seconds=SECONDS, conns=conn_rate.CONNS, timeout=2)
                        c1 = _cpu(p.pid)
                        ok = max(g["ok"], 1)
                        row = {"side": side, "round": i, "cps": round(g["cps"]), "ok": g["ok"],
                               "node_cpu_us_per_conn": round((c1[0] - c0[0]) / ok * 1e6, 1),
                               "user_us_per_conn": round((c1[1] - c0[1]) / ok * 1e6, 1),
                               "cpu_busy": common.cpu_busy(s0, common.cpu_times()),
                               "load": round(os.getloadavg()[0], 2),
                               "errors": sum(g["errors"].values())}
                        print(json.dumps(row), flush=True)
                        out.append(row)
                    finally:
                        _stop(p)
        finally:
            for s in servers:
                cgen.stop(s)
    for side in names:
        rows = [r for r in out if r["side"] == side]
        print(side, "node µs/connection", sorted(r["node_cpu_us_per_conn"] for r in rows),
              "connections/s", sorted(r["cps"] for r in rows))
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    run({"A": sys.argv[1], "B": sys.argv[2]}, int(sys.argv[3]) if len(sys.argv) > 3 else 4,
        Path("/tmp/tandem-bench/conn_ab"))
