"""What several benchmarks share: the lab (always brought down), the node's API,
the kernel's NFQUEUE counters, and a description of the machine."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from bench import cgen


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    try:
        import netfilterqueue
        nfq = getattr(netfilterqueue, "__version__", "?")
    except ImportError:
        nfq = None
    return {
        "cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "netfilterqueue": nfq, "mem_mb": mem, "loadavg_at_start": list(os.getloadavg()),
    }


def calibrate(rounds: int = 5) -> float:
    """ns per iteration of a fixed little Python workload (slices, a concatenation,
    a dict lookup: the engine's kind of work), best of `rounds`, CPU time.  Taken
    around each measurement, it shows how fast this box was running Python then
    (other tenants of a shared host slow a vCPU down without any visible steal)."""
    d = {bytes((i & 255,)) * 13: i for i in range(256)}
    keys = list(d) * 80
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        get = d.get
        for k in keys:
            get(k[:1] + k[1:13])
        best = min(best, time.process_time() - t0)
    return round(best / len(keys) * 1e9, 1)


def other_activity() -> dict[str, Any]:
    """Other labs and busy processes on the box: a benchmark on 2 cores shares them."""
    from lab import nsutil
    spaces = nsutil.list_netns()
    prefixes = sorted({n.rsplit("-", 1)[0] for n in spaces if "-" in n})
    return {"lab_prefixes_present": prefixes, "loadavg": [round(x, 2) for x in os.getloadavg()],
            "calibration_ns": calibrate()}


@contextlib.contextmanager
def lab(prefix: str, **kw: Any) -> Iterator[dict[str, Any]]:
    """lab.topology.up(prefix, **kw) ... always down (even on KeyboardInterrupt)."""
    from lab import topology
    try:
        yield topology.up(prefix, **kw)
    finally:
        res = topology.down(prefix)
        if res.get("errors"):
            print(f"bench: lab down {prefix}: {res['errors']}", file=sys.stderr)


def ns(prefix: str, role: str) -> str:
    from lab import topology
    return topology.ns_name(prefix, role)


def status(prefix: str, name: str = "a", timeout: float = 1.0) -> dict[str, Any]:
    from lab import topology
    return topology.node_status(prefix, name, timeout=timeout)


def api_get(prefix: str, name: str, path: str, timeout: float = 1.0) -> dict[str, Any]:
    from lab import nsutil, topology
    host = next(d["front_addr"] for d in topology.DIRECTORS if d["name"] == name)
    code, body = nsutil.http_get(topology.ns_name(prefix, name), host, topology.API_PORT, path,
                                 timeout=timeout)
    if code != 200:
        raise OSError(f"{path}: HTTP {code}")
    return json.loads(body)


def start_node(prefix: str, name: str = "a", cpu: int | None = None, wait: float = 20.0) -> dict:
    """Start `tandem node` for director `name` of a lab brought up with node=False,
    recorded in the lab's state (so `down` stops it too), optionally pinned."""
    from lab import state as st
    from lab import topology
    with st.prefix_lock(prefix):
        state = st.load_state(prefix)
        rec = topology._start_node(prefix, state, Path(state["configs"][name]), wait, name)
    if cpu is not None:
        cgen.pin(rec["pid"], cpu)
    return rec


def stop_node(rec: dict) -> str:
    from lab import state as st
    return st.stop_process(rec)


def pin_echo_servers(prefix: str, cpu: int) -> list[int]:
    from lab import state as st
    pids = [p["pid"] for p in (st.load_state(prefix) or {}).get("processes", [])
            if str(p.get("name", "")).startswith("echo-")]
    for pid in pids:
        cgen.pin(pid, cpu)
    return pids


def nfq_counters(ns_name: str, queue: int = 0) -> dict[str, int]:
    """/proc/net/netfilter/nfnetlink_queue of a namespace, for one queue.

    Fields (kernel seq_printf): queue, portid, length now, copy mode, copy range,
    dropped because full, dropped at the netlink socket, id sequence (every packet
    that got past the length check), 1."""
    from lab import nsutil

    def read() -> str:
        # /proc/net is /proc/self/net, the main thread's namespace: this thread's is thread-self
        with open("/proc/thread-self/net/netfilter/nfnetlink_queue") as f:
            return f.read()

    try:
        text = nsutil.in_netns(ns_name, read, timeout=5)
    except OSError:
        return {}
    for line in text.splitlines():
        v = line.split()
        if len(v) >= 8 and int(v[0]) == queue:
            return {"length": int(v[2]), "queue_dropped": int(v[5]), "user_dropped": int(v[6]),
                    "id_sequence": int(v[7]), "t": time.monotonic()}
    return {}


def verdicts_between(a: dict[str, int], b: dict[str, int]) -> int:
    """Packets the listener took off the queue (and gave a verdict) between two readings."""
    return ((b["id_sequence"] - a["id_sequence"]) - (b["user_dropped"] - a["user_dropped"])
            - (b["length"] - a["length"]))


def iptables(ns_name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns_name, "iptables", "-w", *args],
                          capture_output=True, text=True, check=check)


def cpu_times() -> list[tuple[int, int]]:
    """(busy, total) jiffies per CPU from /proc/stat."""
    out = []
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                out.append((sum(v) - idle, sum(v)))
    return out


def cpu_busy(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[float]:
    """Per-CPU busy share (0..1) between two cpu_times() readings."""
    return [round((b1 - b0) / max(1, t1 - t0), 3) for (b0, t0), (b1, t1) in zip(a, b)]


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a process (all its threads), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def generator_in_background(gen, dst: str, port: int, seconds: float):
    """Start gen(dst, port, seconds) in a thread: (thread, box, start time).  The box
    gets the generator's result under "gen", or its error under "error"; a window
    reads its counters while the generator runs, then joins the thread."""
    import threading
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["gen"] = gen(dst, port, seconds)
        except Exception as exc:  # noqa: BLE001 - reported
            box["error"] = repr(exc)

    th = threading.Thread(target=run, daemon=True)
    t0 = time.monotonic()
    th.start()
    return th, box, t0
