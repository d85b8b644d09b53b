"""`tandem ipvsadm`: a node's tables, read from its status API, printed exactly as ipvsadm
prints them.  The layouts are director.ipvsadm_format's (-L, -c, -S) and
director.ipvsadm_rate's (--stats, --rate), re-exported here; this module is the command:
fetching from the API, selecting a service, the arguments.

A node in cluster mode adds director.ipvsadm_cluster's block (membership, routes
announced, flows per member, from /status `cluster`) after the whole `-L` listing;
`--cluster` prints that block alone.  A single service (`-t`/`-u`), `-S`, `--stats`,
`--rate` and `-c` stay ipvsadm's layouts only.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Mapping, Sequence

from director.ipvsadm_args import api_url, seconds, vip_port
from director.ipvsadm_cluster import format_cluster
from director.ipvsadm_format import (CONN_TAB_SIZE, FORWARD_NAMES, FORWARD_SWITCHES, IPVS_VERSION,
                                     TITLE_LIST, addrport, expire_str, format_conns, format_list,
                                     format_save, forward_name, largenum, override_mark,
                                     sched_flags, services_of, svc_name, svc_rule_name,
                                     version_line)
from director.ipvsadm_rate import compute_rates, format_rate, format_stats

__all__ = [
    "DEFAULT_API", "IPVS_VERSION", "CONN_TAB_SIZE", "FORWARD_NAMES", "FORWARD_SWITCHES",
    "TITLE_LIST", "addrport", "expire_str", "format_conns", "format_list", "format_save",
    "forward_name", "largenum", "override_mark", "sched_flags", "svc_name", "svc_rule_name",
    "version_line", "compute_rates", "format_rate", "format_stats", "format_cluster",
    "ApiError", "fetch", "run", "add_parser", "main",
]

DEFAULT_API = "http://127.0.0.1:9100"

# -- the command ------------------------------------------------------------------------------

class ApiError(Exception):
    pass


def _api_says(exc: urllib.error.HTTPError) -> str:
    """The API's own words in an error answer (its `Error` body), if it sent them."""
    try:
        said = json.loads(exc.read().decode()).get("error")
    except (ValueError, AttributeError, OSError):
        return ""
    return f": {said}" if isinstance(said, str) and said else ""


def fetch(api: str, path: str, query: Mapping[str, Any] | None = None, *, timeout: float = 5.0,
          token: str | None = None) -> Any:
    url = api.rstrip("/") + path
    if query:
        url += "?" + urllib.parse.urlencode(query)
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as exc:
        raise ApiError(f"{url}: HTTP {exc.code} {exc.reason}{_api_says(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiError(f"cannot reach the node's API at {url}: {reason}") from None
    except ValueError as exc:
        raise ApiError(f"{url}: not JSON: {exc}") from None


def _fetch_all_conns(args, page: int = 10_000, max_pages: int = 100) -> dict:
    conns: list = []
    body: dict = {}
    for i in range(max_pages):
        body = fetch(args.api, "/conns", {"limit": page, "offset": i * page},
                     timeout=args.timeout, token=args.token)
        conns.extend(body.get("conns", []))
        if len(conns) >= int(body.get("total", 0)) or not body.get("conns"):
            break
    return {**body, "conns": conns}


def _select(services: list, args) -> tuple[list, bool]:
    wanted = args.tcp_service or args.udp_service
    if not wanted:
        return services, False
    proto = "tcp" if args.tcp_service else "udp"
    addr, port = wanted
    ip = ipaddress.ip_address(addr)
    hit = [s for s in services if str(s["proto"]).lower() == proto
           and ipaddress.ip_address(s["vip"]) == ip and int(s["port"]) == port]
    if not hit:
        raise ApiError("No such service")
    return hit, True


def _cluster_of(args) -> Mapping | None:
    """The node's /status `cluster` (None: not in cluster mode)."""
    st = fetch(args.api, "/status", timeout=args.timeout, token=args.token)
    return st.get("cluster")


def run(args: argparse.Namespace) -> int:
    """The body of `tandem ipvsadm`; returns the exit code."""
    if args.save and (args.stats or args.rate or args.connection):
        print("tandem ipvsadm: -S takes none of --stats, --rate, -c", file=sys.stderr)
        return 2
    if args.cluster and (args.stats or args.rate or args.connection or args.tcp_service
                         or args.udp_service):
        print("tandem ipvsadm: --cluster takes none of --stats, --rate, -c, -t, -u",
              file=sys.stderr)
        return 2
    if args.rate and not 0 < args.interval <= 60:
        print("tandem ipvsadm: --interval must be in (0, 60]", file=sys.stderr)
        return 2
    try:
        if args.cluster:
            cluster = _cluster_of(args)
            if cluster is None:
                raise ApiError(f"the node at {args.api} is not a cluster member "
                               '(node.mode = "cluster")')
            sys.stdout.write(format_cluster(cluster))
            return 0
        if args.connection:
            body = _fetch_all_conns(args)
            now = body.get("now")
            if now is None and not any("expires_in" in c for c in body["conns"]):
                now = time.time()       # expires is in epoch seconds (an older node: monotonic)
            sys.stdout.write(format_conns(body, now, local=args.local))
            return 0
        if args.rate:
            before = fetch(args.api, "/services", timeout=args.timeout, token=args.token)
            t0 = time.monotonic()
            time.sleep(args.interval)
            after = fetch(args.api, "/services", timeout=args.timeout, token=args.token)
            dt = time.monotonic() - t0
            svcs, single = _select(services_of(after), args)
            text = format_rate(svcs, before, dt, exact=args.exact, nosort=args.nosort, single=single)
        else:
            body = fetch(args.api, "/services", timeout=args.timeout, token=args.token)
            svcs, single = _select(services_of(body), args)
            if args.save:
                text = format_save(svcs, fullnat_switch="-m" if args.fullnat_as_masq else "-b",
                                   laddrs=args.laddrs, nosort=args.nosort)
            elif args.stats:
                text = format_stats(svcs, exact=args.exact, nosort=args.nosort, single=single)
            else:
                text = format_list(svcs, nosort=args.nosort, single=single)
                cluster = None if single else _cluster_of(args)
                if cluster is not None:
                    text += "\n" + format_cluster(cluster)
        sys.stdout.write(text)
        return 0
    except ApiError as exc:
        print(f"tandem ipvsadm: {exc}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, ValueError) as exc:
        what = f"no {exc.args[0]!r} in it" if isinstance(exc, KeyError) else \
            (str(exc.args[0]) if exc.args else type(exc).__name__)
        print(f"tandem ipvsadm: unexpected answer from the API at {args.api}: {what}",
              file=sys.stderr)
        return 1


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    what = p.add_mutually_exclusive_group()
    what.add_argument("-L", "-l", "--list", dest="list", action="store_true",
                      help="list the table (the default)")
    what.add_argument("-S", "--save", dest="save", action="store_true",
                      help="print the table in ipvsadm -R format")
    what.add_argument("--cluster", action="store_true",
                      help="only the cluster block: membership, routes announced, flows per "
                           "member (a node in cluster mode; -L shows it after the table)")
    p.add_argument("-n", "--numeric", action="store_true",
                   help="numeric output (always: accepted for ipvsadm's sake)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--stats", action="store_true", help="packet and byte counters")
    shape.add_argument("--rate", action="store_true", help="per-second rates (two snapshots)")
    shape.add_argument("-c", "--connection", action="store_true", help="the connection table")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("-t", "--tcp-service", metavar="VIP:PORT", type=vip_port,
                     help="only this TCP service")
    sel.add_argument("-u", "--udp-service", metavar="VIP:PORT", type=vip_port,
                     help="only this UDP service")
    p.add_argument("--exact", action="store_true", help="expand numbers (no K/M/G rounding)")
    p.add_argument("--nosort", action="store_true", help="keep the API's order")
    p.add_argument("--local", action="store_true", help="with -c: add FULLNAT's local address column")
    p.add_argument("--laddrs", action="store_true", help="with -S: add -P lines for local addresses")
    p.add_argument("--fullnat-as-masq", action="store_true",
                   help="with -S: print FULLNAT real servers with -m (mainline ipvsadm -R) not -b")
    p.add_argument("--interval", type=seconds, default=1.0, metavar="S",
                   help="with --rate: seconds between the two snapshots (default 1)")
    p.add_argument("--api", default=DEFAULT_API, metavar="URL", type=api_url,
                   help=f"the node's status API (default {DEFAULT_API})")
    p.add_argument("--token", default=None, help="bearer token, if the API wants one")
    p.add_argument("--timeout", type=seconds, default=5.0, metavar="S", help="HTTP timeout")
    p.set_defaults(func=run)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `ipvsadm` on the main CLI's subparsers; its func takes the args."""
    p = subparsers.add_parser("ipvsadm", help="print a node's tables as ipvsadm does",
                              description="Show a node's services and connections in ipvsadm's formats.")
    return _configure(p)


def main(argv: Sequence[str] | None = None) -> int:
    p = _configure(argparse.ArgumentParser(prog="tandem ipvsadm",
                                           description="Show a node's tables in ipvsadm's formats."))
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:       # usage errors and --help
        return int(exc.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
