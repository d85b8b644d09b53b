"""The C load generator (bench/gen.c) and small helpers for running things in
lab namespaces: compile once per source version, run bounded, kill by PID.

The binary is built with the system's `cc` into a cache directory keyed by the
source's hash; without a compiler `binary()` returns None and the callers say
so in their results instead of measuring with a slower generator.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

SRC = Path(__file__).with_name("gen.c")
REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("TANDEM_BENCH_CACHE", "/tmp/tandem-bench"))
LAB_NET = ipaddress.ip_network("198.18.0.0/15")
CPUS = os.cpu_count() or 1
#: the director (NFQUEUE listener, node) runs here; load generation on the other core
DIRECTOR_CPU = 1 if CPUS > 1 else 0
LOAD_CPU = 0


def binary() -> Path | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = SRC.read_bytes()
    out = CACHE / f"gen-{hashlib.sha256(src).hexdigest()[:12]}"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    subprocess.run([cc, "-O2", "-Wall", "-o", str(tmp), str(SRC)], check=True,
                   capture_output=True, text=True)
    os.replace(tmp, out)
    return out


def _check_lab(addrs: str) -> None:
    for a in addrs.split(","):
        if ipaddress.ip_address(a) not in LAB_NET:
            raise ValueError(f"{a}: the benchmarks only send to lab addresses (198.18.0.0/15)")


def ns_argv(ns: str, argv: list[str], cpu: int | None = None) -> list[str]:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []
    return ["ip", "netns", "exec", ns, *pin, *argv]


def run_gen(ns: str, mode: str, *, dst: str, cpu: int | None = LOAD_CPU, seconds: float,
            **opts: Any) -> dict[str, Any]:
    """Run the generator in ns (pinned to cpu) and return its JSON; bounded by
    its own --seconds, and killed at seconds + 15 whatever happens."""
    _check_lab(dst)
    exe = binary()
    if exe is None:
        raise RuntimeError("no C compiler (cc): the C load generator cannot be built")
    argv = [str(exe), mode, "--dst", dst, "--seconds", f"{seconds:g}"]
    for k, v in opts.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    cp = subprocess.run(ns_argv(ns, argv, cpu), capture_output=True, text=True,
                        timeout=seconds + 15)
    lines = [ln for ln in cp.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"generator printed nothing (rc {cp.returncode}): {cp.stderr[-500:]}")
    return json.loads(lines[-1])


def start(ns: str, argv: list[str], cpu: int | None = None, log: Path | None = None) -> subprocess.Popen:
    """Start a process in ns; the caller stops it with stop(proc) (by PID)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    try:
        return subprocess.Popen(ns_argv(ns, argv, cpu), stdout=subprocess.PIPE, stderr=out,
                                start_new_session=True, cwd=str(REPO), env=env)
    finally:
        if log:
            out.close()


def stop(proc: subprocess.Popen, wait: float = 3.0) -> str:
    """SIGTERM, then SIGKILL, to this process only (by its PID)."""
    if proc.poll() is not None:
        return "exited"
    proc.terminate()
    try:
        proc.wait(wait)
        return "terminated"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(wait)
        return "killed"


def pin(pid: int, cpu: int) -> bool:
    """Move an already running process (and its threads) to one CPU."""
    if not shutil.which("taskset"):
        return False
    return subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)],
                          capture_output=True).returncode == 0


def nft(ns: str, script: str) -> None:
    cp = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                        capture_output=True)
    if cp.returncode:
        raise RuntimeError(f"nft in {ns}: {cp.stderr.strip()}")


def nft_delete(ns: str, family: str, table: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", family, table],
                   capture_output=True)


def wait_until(pred, timeout: float, step: float = 0.05) -> bool:
    """Poll pred (an exception counts as False) until true or timeout."""
    end = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return True
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        if time.monotonic() >= end:
            return False
        time.sleep(step)
