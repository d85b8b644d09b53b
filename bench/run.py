"""`tandem bench`: run the benchmarks, print one JSON object, optionally write
docs/benchmarks.md.

    tandem bench [--json] [--write FILE] [--quick] [--only engine,nfq,conn_rate,sync,health,takeover,cluster]

The director CLI registers it with `bench.run.add_parser(subparsers)`.  Without
the CLI: `python -c "import sys; from bench.run import main; sys.exit(main(sys.argv[1:]))" --json`.

Every measurement is bounded in time and brings its lab down (try/finally); one
that fails is reported under its name with "error" and the others still run.
The exit code is 0 when every measurement ran (missed targets included: this
is a benchmark, not a test), 1 when one failed, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]

#: The public keys of the JSON object (None when not measured), and which
#: measurement fills each.
KEYS = {
    "nfq_ceiling_pps": "nfq", "forward_pps": "nfq", "forward_ratio": "nfq",
    "kernel_nat_cps": "conn_rate", "conn_rate_cps": "conn_rate", "conn_rate_ratio": "conn_rate",
    "direct_cps": "conn_rate",
    "engine_pps_inprocess": "engine", "lookup_cost_ratio_1m_vs_1k": "engine",
    "lookup_cost_ratio_hot_set": "engine", "forward_ratio_per_cpu_s": "nfq",
    "bytes_per_conn": "engine",
    "sync_entries_per_s": "sync", "sync_lag_p99_ms": "sync",
    "takeover_ms_p50": "takeover", "takeover_ms_max": "takeover",
    "takeover_ms_p50_10ms": "takeover", "takeover_ms_max_10ms": "takeover",
    "takeover_ms_max_10ms_sync_loss": "takeover", "vrrp_takeover_ms_max": "takeover",
    "vrrp_takeover_ms_max_10ms": "takeover", "gap_ms_max": "takeover",
    "health_down_s_max": "health", "health_up_s_max": "health",
    # the kernel fast path (bench.kpath, bench.kmem)
    "kernel_tput_ratio_1": "kpath", "kernel_tput_ratio_4": "kpath", "kernel_pps_ratio": "kpath",
    "kernel_cps_ratio": "kpath", "kernel_node_cpu_us_per_conn": "kpath",
    "kernel_bytes_per_conn": "kmem", "conntrack_objsize": "kmem",
    # tandem kernel mode against keepalived + conntrackd (bench.toolchain)
    "tandem_matches_or_beats_toolchain": "toolchain",
    "tandem_kill_200_takeover_ms_p50": "toolchain", "toolchain_kill_200_takeover_ms_p50": "toolchain",
    "tandem_young_sync_loss_survived_share": "toolchain",
    "toolchain_young_sync_loss_survived_share": "toolchain",
    # cluster mode: 3 directors against 1 behind the router's ECMP (bench.cluster)
    "cluster_pps_3": "cluster", "cluster_pps_1": "cluster", "cluster_pps_ratio": "cluster",
    "cluster_projected_ratio": "cluster",
    "cluster_cps_3": "cluster", "cluster_cps_1": "cluster", "cluster_cps_ratio": "cluster",
    "cluster_cps_projected_ratio": "cluster",
}

#: name -> (op, bound): the targets from the benchmark issue; None = report only
TARGETS: dict[str, tuple[str, float] | None] = {
    "forward_ratio": (">=", 0.8),
    "conn_rate_ratio": None,
    "lookup_cost_ratio_1m_vs_1k": ("<=", 1.3),
    "bytes_per_conn": ("<=", 400),
    "sync_lag_p99_ms": ("<=", 50),
    "takeover_ms_max": ("<=", 700),
    "takeover_ms_p50_10ms": None,
    "takeover_ms_max_10ms": None,
    "kernel_tput_ratio_1": (">=", 0.9),
    "kernel_tput_ratio_4": (">=", 0.9),
    "kernel_pps_ratio": (">=", 0.9),
    "kernel_cps_ratio": (">=", 0.7),
    "kernel_bytes_per_conn": ("<=", 150),
    "cluster_pps_ratio": None,
    "cluster_projected_ratio": None,
    "cluster_cps_ratio": None,
    "cluster_cps_projected_ratio": None,
}

ORDER = ("engine", "kmem", "nfq", "conn_rate", "kpath", "sync", "health", "takeover", "cluster",
         "toolchain")
LAB_MEASUREMENTS = ("nfq", "conn_rate", "kpath", "sync", "health", "takeover", "cluster", "toolchain")


def _engine(quick: bool) -> dict[str, Any]:
    """In a child process: a 1M-entry table is ~1 GB, and RSS is measured cleanly."""
    return _child("bench.engine", quick)


def _kmem(quick: bool) -> dict[str, Any]:
    """tandem's kernel-flow views at 1M flows, in a child process (RSS measured cleanly)."""
    return _child("bench.kmem", quick)


def _child(module: str, quick: bool) -> dict[str, Any]:
    argv = [sys.executable, "-m", module, *(["--quick"] if quick else [])]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cp = subprocess.run(argv, capture_output=True, text=True, cwd=str(REPO), env=env,
                        timeout=120 if quick else 300)
    if cp.returncode:
        raise RuntimeError(f"{module} exited {cp.returncode}: {cp.stderr[-1500:]}")
    return json.loads(cp.stdout)


def _lab(name: str) -> Callable[[bool], dict[str, Any]]:
    def run(quick: bool) -> dict[str, Any]:
        import importlib
        return importlib.import_module(f"bench.{name}").run(quick)
    return run


MEASUREMENTS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "engine": _engine, "nfq": _lab("nfq"), "conn_rate": _lab("conn_rate"),
    "sync": _lab("sync"), "health": _lab("health"), "takeover": _lab("takeover"),
    "kmem": _kmem, "kpath": _lab("kpath"), "toolchain": _lab("toolchain"),
    "cluster": _lab("cluster"),
}


def check(value: Any, target: tuple[str, float] | None) -> bool | None:
    if target is None or value is None:
        return None
    op, bound = target
    return value >= bound if op == ">=" else value <= bound


def collect(only: list[str], quick: bool, command: str,
            measurements: dict[str, Callable[[bool], dict[str, Any]]] | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the named measurements in order and assemble the result object."""
    from bench import common
    measurements = measurements or MEASUREMENTS
    started = time.monotonic()
    out: dict[str, Any] = {k: None for k in KEYS}
    out.update({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command, "quick": quick, "only": only,
        "machine": common.machine(),
        "activity_at_start": _activity(),
        "results": {},
    })
    lab_reason = None
    if any(n in LAB_MEASUREMENTS for n in only):
        from lab.testing import lab_unavailable_reason
        lab_reason = lab_unavailable_reason()
    for name in only:
        if progress:
            progress(name)
        t0 = time.monotonic()
        before = _activity()
        if name in LAB_MEASUREMENTS and lab_reason:
            res: dict[str, Any] = {"error": f"skipped: {lab_reason}"}
        else:
            try:
                res = measurements[name](quick)
            except Exception as exc:  # noqa: BLE001 - reported, the others still run
                res = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        res.setdefault("seconds", round(time.monotonic() - t0, 1))
        res["activity_before"], res["activity_after"] = before, _activity()
        out["results"][name] = res
        for key, src in KEYS.items():
            if src == name and key in res:
                out[key] = res[key]
    out["targets"] = {k: {"value": out.get(k), "target": (f"{t[0]} {t[1]:g}" if t else "report"),
                          "pass": check(out.get(k), t)} for k, t in TARGETS.items()}
    out["seconds"] = round(time.monotonic() - started, 1)
    return out


def _activity() -> dict[str, Any]:
    try:
        from bench import common
        return common.other_activity()
    except Exception as exc:  # noqa: BLE001 - informational
        return {"error": repr(exc)}


def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(ORDER)
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in MEASUREMENTS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown measurement {', '.join(bad)} "
                                         f"(known: {', '.join(ORDER)})")
    return [n for n in ORDER if n in names]


def command_line(args: argparse.Namespace) -> str:
    parts = ["tandem", "bench"]
    if args.json:
        parts.append("--json")
    if args.write:
        parts += ["--write", args.write]
    if args.quick:
        parts.append("--quick")
    if args.only:
        parts += ["--only", args.only]
    return shlex.join(parts)


def main_args(args: argparse.Namespace) -> int:
    try:
        only = parse_only(args.only)
    except argparse.ArgumentTypeError as exc:
        print(f"tandem bench: {exc}", file=sys.stderr)
        return 2
    def progress(name: str) -> None:       # stderr: stdout carries only the JSON
        print(f"tandem bench: {name} ...", file=sys.stderr, flush=True)

    result = collect(only, args.quick, command_line(args), progress=progress)
    if args.write:
        from bench import report
        report.write(args.write, result)
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        from bench import report
        print(report.summary_table(result))
    failed = [n for n, r in result["results"].items() if r.get("error")]
    return 1 if failed else 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench` on the tandem CLI's subparsers."""
    b = subparsers.add_parser("bench", help="benchmarks: packet path, connection rate, sync, failover",
                              description=__doc__.split("\n\n")[0])
    _arguments(b)
    b.set_defaults(func=main_args)
    return b


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--write", metavar="FILE", help="write the Markdown report (e.g. docs/benchmarks.md)")
    p.add_argument("--quick", action="store_true", help="smaller and shorter (about 2 minutes)")
    p.add_argument("--only", metavar="NAME[,NAME]",
                   help=f"run only these measurements ({', '.join(ORDER)})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tandem bench", description=__doc__.split("\n\n")[0])
    _arguments(p)
    return main_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
