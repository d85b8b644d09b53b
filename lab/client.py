"""The lab's traffic tool, run inside the client namespace (or any lab namespace).

    python -m lab.client <mode> [options]

Prints exactly one JSON object on stdout.  Every loop is bounded in count and in time: each
operation has ``--timeout`` seconds, the whole run has ``--deadline`` seconds.  Targets must be
IP literals in 198.18.0.0/15 (the lab) or loopback.

modes
  tcp-probe   --host H [--host H2 ...] --port P      connect once: open / refused / timeout
  tcp-whoami  --host VIP --port 80 --count N [--concurrency C | --rate R [--stop-file F]]
              [--source-ports FIRST]
  udp-whoami  --host VIP --port 80 --count N [--concurrency C]
  bulk        --host VIP --port 80 --bytes N [--newlines]
  hold        --host VIP --port 80 --conns N --seconds S [--interval 0.02] [--ready-file F]
  udp-hold    --host VIP --port 80 --flows M --seconds S [--interval 0.02]
  garbage     --target VIP --count N [--kinds k1,k2] [--rate PPS]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from .traffic.bulk import bulk
from .traffic.common import (MAX_BYTES, MAX_CONNS, MAX_COUNT, MAX_GARBAGE_PER_KIND, MAX_SECONDS,
                             UsageError, check_host, raise_nofile)
from .traffic.garbage import GARBAGE_KINDS, garbage
from .traffic.garbage6 import garbage6
from .traffic.hold import hold
from .traffic.udp_hold import udp_hold
from .traffic.whoami import tcp_probe, tcp_whoami, udp_whoami

def _positive(cap: float, kind=int):
    def conv(v: str):
        x = kind(v)
        if x <= 0 or x > cap:
            raise argparse.ArgumentTypeError(f"must be in (0, {cap}]")
        return x

    return conv


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m lab.client", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)

    def common(p, port_default=80, timeout=2.0, deadline=60.0):
        p.add_argument("--port", type=int, default=port_default)
        p.add_argument("--operator-target", action="store_true",
                       help="the host is the operator's own VIP (tandem drill against a "
                            "deployment): skip the lab-only address check")
        p.add_argument("--timeout", type=_positive(600.0, float), default=timeout,
                       help="seconds per operation (default %(default)s)")
        p.add_argument("--deadline", type=_positive(MAX_SECONDS, float), default=deadline,
                       help="overall seconds (default %(default)s)")

    p = sub.add_parser("tcp-probe", help="connect once to each host: open/refused/timeout")
    p.add_argument("--host", action="append", required=True)
    common(p, timeout=1.0, deadline=30.0)
    p.set_defaults(run=tcp_probe)

    for name, fn in (("tcp-whoami", tcp_whoami), ("udp-whoami", udp_whoami)):
        p = sub.add_parser(name, help=f"{name.split('-')[0].upper()} WHOAMI exchanges")
        p.add_argument("--host", required=True)
        p.add_argument("--count", type=_positive(MAX_COUNT), default=10)
        p.add_argument("--concurrency", type=_positive(MAX_CONNS), default=1)
        if name == "tcp-whoami":
            p.add_argument("--rate", type=_positive(1000.0, float),
                           help="start this many new connections a second, each on its own "
                                "(instead of --concurrency workers)")
            p.add_argument("--stop-file", help="with --rate: start no more once this file exists")
            p.add_argument("--source-ports", type=_positive(65535), metavar="FIRST",
                           help="connection i from port FIRST+i: ports no earlier connection "
                                "used, so no director holds an entry from before for them")
        common(p, timeout=2.0, deadline=60.0)
        p.set_defaults(run=fn)

    p = sub.add_parser("bulk", help="stream bytes through the echo and compare sha256")
    p.add_argument("--host", required=True)
    p.add_argument("--bytes", type=_positive(MAX_BYTES), default=100_000_000)
    p.add_argument("--chunk", type=_positive(16 << 20), default=256 << 10)
    p.add_argument("--newlines", action="store_true", help="allow newline bytes in the data")
    p.add_argument("--seed", type=int, default=1)
    common(p, timeout=10.0, deadline=300.0)
    p.set_defaults(run=bulk)

    p = sub.add_parser("hold", help="long-lived connections echoing numbered lines")
    p.add_argument("--host", required=True)
    p.add_argument("--conns", type=_positive(MAX_CONNS), default=100)
    p.add_argument("--seconds", type=_positive(MAX_SECONDS, float), default=10.0)
    p.add_argument("--interval", type=_positive(60.0, float), default=0.02)
    p.add_argument("--connect-concurrency", type=_positive(MAX_CONNS), default=200)
    p.add_argument("--ready-file", help="written (JSON) once all connections are open")
    p.add_argument("--no-spread", action="store_true",
                   help="every connection sends its first line at once (not spread over one interval)")
    p.add_argument("--fault-file", help="read every 0.1 s: {\"at\": wall time of a fault}, or {\"at\": "
                                        "[T1, T2, ...]} for a sequence, to time each takeover")
    p.add_argument("--stop-file", help="stop holding once this file exists (at most --seconds)")
    common(p, timeout=5.0, deadline=0.0)
    p.set_defaults(run=hold)

    p = sub.add_parser("udp-hold", help="long-lived UDP flows echoing numbered datagrams")
    p.add_argument("--host", required=True)
    p.add_argument("--flows", type=_positive(MAX_CONNS), default=10)
    p.add_argument("--seconds", type=_positive(MAX_SECONDS, float), default=10.0)
    p.add_argument("--interval", type=_positive(60.0, float), default=0.02)
    p.add_argument("--stop-file", help="stop sending once this file exists (at most --seconds)")
    common(p, timeout=1.0, deadline=0.0)
    p.set_defaults(run=udp_hold)

    p = sub.add_parser("garbage", help="malformed IPv4 or IPv6 packets through a raw socket")
    p.add_argument("--target", required=True)
    p.add_argument("--count", type=_positive(MAX_GARBAGE_PER_KIND), default=10,
                   help="packets per kind")
    p.add_argument("--kinds", default="all", help=f"comma list of: {', '.join(GARBAGE_KINDS)}")
    p.add_argument("--rate", type=float, default=2000.0, help="packets per second (0: no pacing)")
    p.add_argument("--seed", type=int, default=None)
    common(p, timeout=1.0, deadline=60.0)
    p.set_defaults(run=_garbage)
    return ap


async def _garbage(args):
    """Malformed IPv4, or IPv6 for an IPv6 target."""
    return await (garbage6 if ":" in args.target else garbage)(args)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        for attr in ("host", "target"):
            v = getattr(args, attr, None)
            for h in v if isinstance(v, list) else [v] if v else []:
                if not (args.operator_target and args.mode in ("hold", "udp-hold")):
                    check_host(h)
        if args.mode == "hold" and not args.deadline:
            # default: connect phase + hold + margin
            args.deadline = min(MAX_SECONDS, args.seconds + 2 * args.timeout + 30.0)
        raise_nofile()
        run = asyncio.run
        try:
            import uvloop  # type: ignore

            run = uvloop.run
        except (ImportError, AttributeError):
            pass
        # last-resort bound on the whole process: SIGALRM (default action: terminate)
        signal.alarm(int(args.deadline) + 30)

        async def bounded():
            try:
                async with asyncio.timeout(args.deadline + 10):
                    return await args.run(args)
            except TimeoutError:
                return {"error": "overall deadline exceeded"}

        result = run(bounded())
        signal.alarm(0)
    except UsageError as exc:
        print(json.dumps({"mode": args.mode, "error": str(exc)}))
        return 2
    result = {"mode": args.mode, **result}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
