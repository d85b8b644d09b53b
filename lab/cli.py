"""``tandem lab up|down|status``: the lab's command line (hooked into the main CLI by
``lab.cli.add_parser(subparsers)``; also ``python -m lab ...``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _kv_float(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected NAME=SECONDS, got {text!r}")
    try:
        return key, float(value) if "." in value else int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in {text!r}") from None


def _services(services: list[dict[str, Any]]) -> str:
    return ", ".join(f"{s['proto']}/{s['port']} -> :{s['rs_port']}"
                     + (f" ({s['client_address']})" if s.get("client_address", "none") != "none" else "")
                     for s in services)


def _summary(info: dict[str, Any]) -> str:
    lines = [f"lab {info['prefix']!r} is up (state and logs in {info['state_dir']}; "
             "`lab down --keep-logs DIR` keeps the logs)"]
    lines.append(f"  VIP {info['vip']}  services {_services(info['services'])}  laddrs {' '.join(info['laddrs'])}")
    c = info["client"]
    lines.append(f"  client    {c['ns']:<16} {c['addr']} (via {c['gateway']})")
    r = info["router"]
    lines.append(f"  router    {r['ns']:<16} {r['client_addr']} / {r['front_addr']}")
    for d in info["directors"]:
        node = "node running" if d.get("node") else "no node"
        lines.append(
            f"  director  {d['ns']:<16} front {d['front_addr']} back {d['back_addr']}"
            f"  api {d['api']}  ({node})"
        )
    for rs in info["real_servers"]:
        lines.append(f"  real      {rs['ns']:<16} {rs['addr']}:{rs['port']} (echo)")
    if info.get("ipv6"):
        lines.append(f"  IPv6: VIP6 {info['vip6']} services {_services(info['services6'])}  laddrs6 "
                     f"{' '.join(info['laddrs6'])}  client {c['addr6']}")
        lines.append("        directors " + "  ".join(f"{d['name']} {d['front_addr6']}" for d in info["directors"])
                     + "  real servers " + " ".join(rs["addr6"] for rs in info["real_servers"]))
    if info.get("api_token"):
        lines.append(f"  api token {info['api_token']}  (export T={info['api_token']}: the change "
                     "requests of docs/operations.md then run as written)")
    lines.append(
        f"  try: ip netns exec {c['ns']} {sys.executable} -m lab.client tcp-whoami "
        f"--host {info['vip']} --port 80 --count 10"
    )
    return "\n".join(lines)


def cmd_up(args) -> int:
    from . import topology

    if args.cluster:
        return _cluster_up(args)
    kw: dict[str, Any] = {}
    if args.timeout:
        kw["timeouts"] = dict(args.timeout)
    if args.scheduler:
        kw["scheduler"] = args.scheduler
    if not args.engine_only and not args.no_node:
        kw["kernel"] = True
    try:
        info = topology.up(args.prefix, node=not args.no_node, ha=not args.single,
                           advert_interval=args.advert_interval, ipv6=args.ipv6,
                           sync_ipv6=args.sync_ipv6, **kw)
    except Exception as exc:  # noqa: BLE001 - reported, exit code
        msg = f"lab up failed: {exc}"
        if args.json:
            print(json.dumps({"error": msg}))
        print(msg, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(_summary(info))
        if kw.get("kernel"):
            from .plan import KERNEL_LADDRS, KERNEL_VIP
            print(f"  kernel-mode service: VIP {KERNEL_VIP} tcp/80 udp/80 (forwarding = \"kernel\": "
                  f"the engine schedules each new flow, the kernel forwards the rest)  laddrs "
                  f"{' '.join(KERNEL_LADDRS)}; tandem drill --forwarding kernel drills it")
    return 0


def _cluster_up(args) -> int:
    from . import cluster

    try:
        info = cluster.up(args.prefix, args.cluster, kernel=not args.engine_only, ipv6=args.ipv6)
    except Exception as exc:  # noqa: BLE001 - reported, exit code
        msg = f"lab up --cluster failed: {exc}"
        if args.json:
            print(json.dumps({"error": msg}))
        print(msg, file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2) if args.json else cluster.summary(info))
    return 0


def cmd_down(args) -> int:
    from . import topology

    result = topology.down(args.prefix, logs_to=getattr(args, "keep_logs", None))
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
    else:
        removed = result.get("namespaces") or []
        stopped = result.get("processes") or {}
        print(
            f"lab {args.prefix!r} down: {len(removed)} namespaces removed, "
            f"{sum(1 for v in stopped.values() if v in ('terminated', 'killed'))} processes stopped"
        )
        if "logs_kept" in result:
            print(f"  logs kept in {args.keep_logs}: "
                  + (" ".join(Path(p).name for p in result["logs_kept"]) or "none (no lab logs)"))
        for sp in result.get("stray_processes") or []:
            print(
                f"  warning: pid {sp['pid']} ({sp['cmdline']}) was in {sp['ns']} but not recorded;"
                " not signalled",
                file=sys.stderr,
            )
        for e in result.get("errors") or []:
            print(f"  error: {e}", file=sys.stderr)
    return 1 if result.get("errors") else 0


def cmd_status(args) -> int:
    from . import topology

    try:
        result = topology.status(args.prefix)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        present = [n for n, ok in result["namespaces"].items() if ok]
        if not result["state"] and not present:
            print(f"lab {args.prefix!r}: not up")
        else:
            print(
                f"lab {args.prefix!r}: {'up' if result['up'] else 'DEGRADED'}; "
                f"namespaces {len(present)}/{len(result['namespaces'])}"
            )
            for n, ok in result["namespaces"].items():
                if not ok:
                    print(f"  missing namespace {n}")
            for p in result["processes"]:
                role = f" {p['role'] or 'no answer'}" if "role" in p else ""
                print(
                    f"  {p['name']:<10} pid {p['pid']:<8} {'alive' if p['alive'] else 'DEAD'}{role}"
                    f"  log {p['log']}"
                )
    return 0 if result["up"] else 1


def cmd_fault(args) -> int:
    from . import topology

    from . import cluster

    try:
        if cluster.is_cluster(args.prefix):
            out = cluster.fault(args.prefix, args.director, args.kind)
        else:
            out = topology.fault(args.prefix, args.director, args.kind)
    except Exception as exc:  # noqa: BLE001 - reported, exit code
        print(f"lab fault failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out))
    else:
        extra = {k: v for k, v in out.items() if k not in ("director", "fault", "at")}
        print(f"director {out['director']}: {out['fault']} done" + (f" ({extra})" if extra else ""))
    return 0


def cmd_join(args) -> int:
    from . import cluster_join

    try:
        out = cluster_join.join(args.prefix, args.director)
    except Exception as exc:  # noqa: BLE001 - reported, exit code
        print(f"lab join failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out))
    else:
        print(f"director {out['director']} joined: announced after {out['announced_after_s']} s; "
              f"reloaded {' '.join(out['reloaded']) or 'none'}"
              + (f"; not running (they read the new config on restore): "
                 f"{' '.join(out['not_running'])}" if out["not_running"] else ""))
        for dst, hops in out["routes"].items():
            print(f"  route {dst} via {' '.join(hops) or 'nothing'}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``lab`` with subcommands up / down / status to an argparse subparsers object."""
    lab = subparsers.add_parser("lab", help="the network-namespace lab (root)")
    sub = lab.add_subparsers(dest="lab_command", metavar="{up,down,status,fault,join}")
    sub.required = True

    def prefix(p):
        p.add_argument("--prefix", default="tandem", help="namespace name prefix (default %(default)s)")

    up = sub.add_parser("up", help="build the lab (replacing one with the same prefix)")
    prefix(up)
    up.add_argument("--json", action="store_true", help="print the lab description as JSON")
    up.add_argument("--no-node", action="store_true", help="start no node (topology and echo servers only)")
    up.add_argument("--single", action="store_true",
                    help="one node on director a holding the addresses, no election or sync")
    up.add_argument("--advert-interval", type=float, default=0.1, metavar="SECONDS",
                    help="VRRP advertisement interval (default %(default)s)")
    up.add_argument("--ipv6", action="store_true",
                    help="dual-stack: IPv6 from 2001:2::/48 beside IPv4, a VIP6 (tcp/udp 80) "
                         "through IPv6 laddrs to the real servers' IPv6 echo; with --cluster: "
                         "an IPv6 VIP announced over IPv6 BGP sessions (ECMP), an IPv6 laddr "
                         "per director")
    up.add_argument("--sync-ipv6", action="store_true",
                    help="(implies --ipv6) the pair syncs over IPv6 (ff02::81 on the back link)")
    up.add_argument("--scheduler", help="scheduler for both services (default wlc)")
    up.add_argument("--kernel-service", action="store_true",
                    help='(the default) the nodes also run the kernel-mode service: KERNEL_VIP:80 '
                         'tcp+udp, forwarding = "kernel" (its own VIP 198.18.0.101 and laddr '
                         "198.18.2.102)")
    up.add_argument("--engine-only", action="store_true",
                    help="leave the kernel-mode service out: only the engine-mode VIP")
    up.add_argument(
        "--timeout",
        action="append",
        type=_kv_float,
        metavar="NAME=SECONDS",
        help="override a [timeouts] entry of the node config (repeatable), e.g. udp=5",
    )
    up.add_argument("--cluster", type=int, metavar="N",
                    help="cluster mode instead of the pair: N directors a, b, c, ... (1-8) behind "
                         "an ECMP router, BIRD 2 everywhere, each running the node in cluster "
                         "mode (lab/cluster.py), with the kernel-mode service beside the "
                         "engine-mode VIP unless --engine-only; the pair's other options do not "
                         "apply")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop the lab's processes, delete its namespaces")
    prefix(down)
    down.add_argument("--json", action="store_true")
    down.add_argument("--keep-logs", metavar="DIR",
                      help="copy the lab's logs (a.log, b.log, rs1.log, ...) into DIR once its "
                           "processes have stopped (the lab's own copies go with it)")
    down.set_defaults(func=cmd_down)

    from .bgp import MAX_DIRECTORS
    from .faults import FAULT_TABLE

    fault = sub.add_parser("fault", help="inject a fault into a director of the pair or "
                                         "the cluster (kill, link, stop, restore; drain in a cluster)")
    prefix(fault)
    fault.add_argument("director", choices=[chr(ord("a") + i) for i in range(MAX_DIRECTORS)])
    fault.add_argument("kind", choices=tuple(FAULT_TABLE) + ("crash", "drain", "partition"),
                       help="; ".join(f"{k}: {what}" for k, (what, _steps) in FAULT_TABLE.items())
                       + "; crash (a cluster director only): its node SIGKILLed, its BIRD "
                         "left running, then `tandem cluster withdraw` as a service manager "
                         "runs it; drain (a cluster director only): VIP routes withdrawn, its laddrs "
                         "kept while it has connections, for at most [cluster] drain_timeout; "
                         "partition (a cluster director only): its sync cut, its routes not")
    fault.add_argument("--json", action="store_true")
    fault.set_defaults(func=cmd_fault)

    join = sub.add_parser("join", help="add one more director to a running cluster lab (its "
                                       "namespace, link, BIRD and node; the running nodes "
                                       "learn it by a reload; it pulls the table, then announces)")
    prefix(join)
    join.add_argument("director", choices=[chr(ord("a") + i) for i in range(MAX_DIRECTORS)],
                      help="the new director's letter (its addresses follow from it)")
    join.add_argument("--json", action="store_true")
    join.set_defaults(func=cmd_join)

    status = sub.add_parser("status", help="what of the lab exists")
    prefix(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    return lab


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab")
    sub = ap.add_subparsers(required=True)
    add_parser(sub)
    args = ap.parse_args(["lab", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
