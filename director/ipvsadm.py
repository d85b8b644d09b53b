"""`tandem ipvsadm`: a node's tables printed exactly as ipvsadm prints them.

Pure functions turn the status API's JSON into ipvsadm 1.31's layouts, so the
muscle memory, the screen-scraping scripts and the runbooks of LVS operators
keep working:

    format_list(services)             ipvsadm -L -n
    format_stats(services)            ipvsadm -L -n --stats
    format_rate(services, before, dt) ipvsadm -L -n --rate
    format_conns(conns)               ipvsadm -L -n -c
    format_save(services)             ipvsadm -S -n

`services` is the GET /services body (or its "services" list); `conns` is the
GET /conns body (or its "conns" list).  The printf formats, the column widths,
the K/M/G/T rounding of print_largenum, the order of service flags and the
sort order are those of ipvsadm 1.31 (checked against the strings and the
code of the Debian 1.31 binary).  Deliberate differences, all forced by what
FULLNAT is:

* Forward is `FullNat`, as DPVS's ipvsadm prints it.
* In the save format a FULLNAT real server gets `-b`, the forwarding switch of
  the FULLNAT forks (Alibaba LVS, DPVS: `-b` FNAT, `-m` NAT, `-g` DR, `-i`
  tunnel), so `ipvsadm -R` of those forks restores it.  Mainline ipvsadm has
  no FULLNAT and reads `-b` on `-a` as an error; `fullnat_switch="-m"`
  (`--fullnat-as-masq`) prints masquerading instead, which mainline restores
  as NAT, the nearest thing it has.  Note mainline's own clash: on `-A`, `-b`
  is --sched-flags, and that is what it means in our `-A` lines too.
* A real server whose weight is an operator's override (the API's weight or
  drain, which beats the config file until cleared) gets a sixth field after
  InActConn in `-L`: `override: drain by a (file 1)` or `override: weight 3 by
  b (file 1)`.  The five columns before it are ipvsadm's.
* Addresses are always numeric (`-n` is accepted and changes nothing).
* Services and real servers are sorted by (family, protocol, address, port)
  numerically.  ipvsadm's comparator subtracts two unsigned addresses into an
  int, so addresses more than 2^31 apart can come out of numeric order there.
* `-c` shows the expiry the node reports; the connection's local address
  (FULLNAT's laddr:lport) can be added as a column with `local=True`
  (`--local`), which ipvsadm has not.

(Over ~400 lines on purpose: every ipvsadm layout and its printf formats in one
place, checked character by character against ipvsadm's own output.)
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
from typing import Any, Iterable, Mapping, Sequence

from director.ipvsadm_args import api_url, seconds, vip_port
from proto.consts import PROTOS

DEFAULT_API = "http://127.0.0.1:9100"
IPVS_VERSION = "1.2.1"
CONN_TAB_SIZE = 4096

FORWARD_NAMES = {"fullnat": "FullNat", "masq": "Masq", "local": "Local", "tunnel": "Tunnel",
                 "route": "Route"}
#: forward name -> the switch ipvsadm -S prints for it (FullNat: the forks' -b)
FORWARD_SWITCHES = {"FullNat": "-b", "Masq": "-m", "Tunnel": "-i", "Local": "-g", "Route": "-g"}

TITLE_LIST = ("Prot LocalAddress:Port Scheduler Flags\n"
              "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")
STATS_COLUMNS = ("Conns", "InPkts", "OutPkts", "InBytes", "OutBytes")
RATE_COLUMNS = ("CPS", "InPPS", "OutPPS", "InBPS", "OutBPS")

AF_INET, AF_INET6 = 2, 10
PROTO_NUMBERS = {**PROTOS, "sctp": 132}    # ipvsadm also names SCTP


# -- building blocks ------------------------------------------------------------------

def _services(body: Any) -> list[Mapping]:
    if isinstance(body, Mapping):
        return list(body.get("services", []))
    return list(body)


def _conns(body: Any) -> list[Mapping]:
    if isinstance(body, Mapping):
        return list(body.get("conns", []))
    return list(body)


def addrport(addr: str, port: int) -> str:
    """addrport_to_anyname with FMT_NUMERIC: `a.b.c.d:p` or `[v6]:p`."""
    ip = ipaddress.ip_address(addr)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _split_addrport(text: str) -> tuple[str, int]:
    """The API's `addr:port` (v6 unbracketed or bracketed) -> (addr, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _reformat(text: str) -> str:
    addr, port = _split_addrport(text)
    return addrport(addr, port)


def _family(addr: str) -> int:
    return AF_INET6 if ipaddress.ip_address(addr).version == 6 else AF_INET


def _svc_sort_key(svc: Mapping) -> tuple:
    ip = ipaddress.ip_address(svc["vip"])
    return (0, _family(svc["vip"]), PROTO_NUMBERS.get(str(svc["proto"]).lower(), 255),
            int(ip), int(svc["port"]))


def _dest_sort_key(rs: Mapping) -> tuple:
    return (int(ipaddress.ip_address(rs["addr"])), int(rs["port"]))


def _sorted(services: Iterable[Mapping], nosort: bool) -> list[Mapping]:
    out: list[Mapping] = []
    for s in services:
        rs = list(s.get("real_servers", []))
        if not nosort:
            rs.sort(key=_dest_sort_key)
        out.append({**s, "real_servers": rs})
    if not nosort:
        out.sort(key=_svc_sort_key)
    return out


def svc_name(svc: Mapping) -> str:
    """`"%-4s %s"` of protocol and address, cut at 33 characters for IPv4."""
    name = "%-4s %s" % (str(svc["proto"]).upper(), addrport(svc["vip"], int(svc["port"])))
    return name if _family(svc["vip"]) == AF_INET6 else name[:33]


def svc_rule_name(svc: Mapping) -> str:
    flag = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}[str(svc["proto"]).lower()]
    return f"{flag} {addrport(svc['vip'], int(svc['port']))}"


def _dest_name(svc: Mapping, rs: Mapping) -> str:
    name = addrport(rs["addr"], int(rs["port"]))
    return name if _family(svc["vip"]) == AF_INET6 else name[:28]


def sched_flags(svc: Mapping) -> str:
    """print_sched_flags: sh/mh fallback before port; flag-1..3 otherwise; then ours."""
    flags = [str(f) for f in svc.get("flags", []) or []]
    sched = str(svc.get("scheduler", ""))
    if sched in ("sh", "mh"):
        order = [f"{sched}-fallback", f"{sched}-port"] + (["flag-3"] if sched == "mh" else [])
    else:
        order = ["flag-1", "flag-2", "flag-3"]
    known = [f for f in order if f in flags]
    return ",".join(known + [f for f in flags if f not in known])


def _persistent(svc: Mapping) -> int:
    p = svc.get("persistent") or 0
    return int(p) if p is not True else 300


def _mask(svc: Mapping) -> str | None:
    """The persistence mask as ipvsadm shows it, or None when it is the full mask."""
    family = _family(svc["vip"])
    prefix = svc.get("persist_netmask")
    if prefix is None:
        return None
    prefix = int(prefix)
    if family == AF_INET:
        return None if prefix == 32 else str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)
    return None if prefix == 128 else str(prefix)


def forward_name(rs: Mapping) -> str:
    f = str(rs.get("forward") or "FullNat")
    return FORWARD_NAMES.get(f.lower(), f)


def largenum(n: int | float, exact: bool = False) -> str:
    """print_largenum: 9 columns, K/M/G/T (divided by 1000s) when it does not fit."""
    i = max(int(n), 0)
    if exact:
        s = str(i)
        return s.rjust(9 if len(s) <= 8 else len(s) + 1)
    if i < 100_000_000:
        return "%9d" % i
    if i < 1_000_000_000:
        return "%8dK" % (i // 1000)
    if i < 100_000_000_000:
        return "%8dM" % (i // 1_000_000)
    if i < 100_000_000_000_000:
        return "%8dG" % (i // 1_000_000_000)
    return "%8dT" % (i // 1_000_000_000_000)


def version_line(version: str = IPVS_VERSION, size: int = CONN_TAB_SIZE) -> str:
    return f"IP Virtual Server version {version} (size={size})\n"


def _header(single: bool, version: str, size: int) -> str:
    # list_service (one service asked for) prints no version line; list_all does
    return "" if single else version_line(version, size)


# -- -L -n ------------------------------------------------------------------------------

def format_list(services: Any, *, version: str = IPVS_VERSION, size: int = CONN_TAB_SIZE,
                nosort: bool = False, single: bool = False) -> str:
    """`ipvsadm -L -n`.  `single`: the layout of `ipvsadm -L -n -t VIP:port`."""
    out = [_header(single, version, size), TITLE_LIST]
    for s in _sorted(_services(services), nosort):
        line = "%s %s" % (svc_name(s), s.get("scheduler", ""))
        flags = sched_flags(s)
        if flags:
            line += f" ({flags})"
        if _persistent(s):
            line += " persistent %u" % _persistent(s)
            mask = _mask(s)
            if mask is not None:
                line += f" mask {mask}"
            if s.get("pe"):
                line += f" pe {s['pe']}"
        if s.get("ops"):
            line += " ops"
        # ours, after ipvsadm's own words as the override mark: how real servers learn the
        # client (docs/client-address.md); absent for "none", so plain listings are unchanged
        if s.get("client_address", "none") != "none":
            line += f" client_address {s['client_address']}"
        out.append(line + "\n")
        for rs in s["real_servers"]:
            line = "  -> %-28s %-7s %-6d %-10u %-10u" % (
                _dest_name(s, rs), forward_name(rs), int(rs.get("weight", 0)),
                int(rs.get("active", 0)), int(rs.get("inactive", 0)))
            mark = override_mark(rs)
            out.append(line + (" " + mark if mark else "") + "\n")
    return "".join(out)


def override_mark(rs: Mapping) -> str:
    """After ipvsadm's five columns (so its parsers still read them), what decides the
    weight when the operator does, not the file: `override: drain by a (file 1)`."""
    o = rs.get("override")
    if not o:
        return ""
    what = "drain" if o.get("drain") else f"weight {o.get('weight')}"
    file = rs.get("config_weight")
    return f"override: {what} by {o.get('by')}" + ("" if file is None else f" (file {file})")


# -- --stats and --rate -------------------------------------------------------------------

_STAT_FIELDS = ("conns_total", "packets_in", "packets_out", "bytes_in", "bytes_out")
_RATE_FIELDS = ("cps", "inpps", "outpps", "inbps", "outbps")


def _svc_stats(s: Mapping) -> list[int]:
    """A service's counters: its own `stats` if the API sends them (ipvsadm's names
    conns/inpkts/outpkts/inbytes/outbytes), else the sum over its real servers."""
    st = s.get("stats")
    if isinstance(st, Mapping):
        return [int(st.get(k, 0)) for k in ("conns", "inpkts", "outpkts", "inbytes", "outbytes")]
    return [sum(int(rs.get(f, 0)) for rs in s.get("real_servers", [])) for f in _STAT_FIELDS]


def _title(columns: Sequence[str]) -> str:
    return ("%-33s %8s %8s %8s %8s %8s\n" % ("Prot LocalAddress:Port", *columns)
            + "  -> RemoteAddress:Port\n")


def format_stats(services: Any, *, exact: bool = False, version: str = IPVS_VERSION,
                 size: int = CONN_TAB_SIZE, nosort: bool = False, single: bool = False) -> str:
    """`ipvsadm -L -n --stats` (`exact`: --exact)."""
    out = [_header(single, version, size), _title(STATS_COLUMNS)]
    for s in _sorted(_services(services), nosort):
        out.append("%-33s" % svc_name(s) + "".join(largenum(v, exact) for v in _svc_stats(s)) + "\n")
        for rs in s["real_servers"]:
            out.append("  -> %-28s" % _dest_name(s, rs)
                       + "".join(largenum(int(rs.get(f, 0)), exact) for f in _STAT_FIELDS) + "\n")
    return "".join(out)


def _round(x: float) -> int:
    # the estimator's (rate + 0x1FF) >> 10: to nearest, halves up
    return max(int(x + 0.5), 0)


def compute_rates(after: Any, before: Any, seconds: float) -> list[dict]:
    """Services of `after` with `rates` (cps, inpps, outpps, inbps, outbps) on every
    service and real server, from the counters' change over `seconds`.  A service
    or real server absent from `before` counts from zero; a counter that went
    down (a restarted node) counts as no change."""
    if seconds <= 0:
        raise ValueError("the interval between snapshots must be > 0")
    old = {(str(s["proto"]).lower(), s["vip"], int(s["port"])): s for s in _services(before)}
    out = []
    for s in _services(after):
        o = old.get((str(s["proto"]).lower(), s["vip"], int(s["port"])), {})
        o_rs = {(r["addr"], int(r["port"])): r for r in o.get("real_servers", [])}
        new_rs = []
        for r in s.get("real_servers", []):
            prev = o_rs.get((r["addr"], int(r["port"])), {})
            deltas = [max(int(r.get(f, 0)) - int(prev.get(f, 0)), 0) for f in _STAT_FIELDS]
            new_rs.append({**r, "rates": {k: _round(d / seconds) for k, d in zip(_RATE_FIELDS, deltas)}})
        deltas = [max(a - b, 0) for a, b in zip(_svc_stats(s), _svc_stats(o) if o else [0] * 5)]
        out.append({**s, "real_servers": new_rs,
                    "rates": {k: _round(d / seconds) for k, d in zip(_RATE_FIELDS, deltas)}})
    return out


def format_rate(services: Any, before: Any = None, seconds: float | None = None, *,
                exact: bool = False, version: str = IPVS_VERSION, size: int = CONN_TAB_SIZE,
                nosort: bool = False, single: bool = False) -> str:
    """`ipvsadm -L -n --rate`.

    Either give two /services snapshots (`services` taken `seconds` after
    `before`), or services whose entries carry a `rates` dict already
    ({cps, inpps, outpps, inbps, outbps}; missing = 0).  As in the kernel, the
    *BPS columns are bytes per second.
    """
    svcs: Iterable[Mapping]
    if before is None:
        svcs = _services(services)
    elif seconds is None:
        raise ValueError("rates from two snapshots need the seconds between them")
    else:
        svcs = compute_rates(services, before, seconds)
    out = [_header(single, version, size), _title(RATE_COLUMNS)]
    for s in _sorted(svcs, nosort):
        r = s.get("rates") or {}
        out.append("%-33s" % svc_name(s)
                   + "".join(largenum(int(r.get(k, 0)), exact) for k in _RATE_FIELDS) + "\n")
        for rs in s["real_servers"]:
            r = rs.get("rates") or {}
            # ipvsadm: "  -> %-28s %8llu %8llu %8llu" then print_largenum twice
            out.append("  -> %-28s %8d %8d %8d" % (_dest_name(s, rs), int(r.get("cps", 0)),
                                                   int(r.get("inpps", 0)), int(r.get("outpps", 0)))
                       + largenum(int(r.get("inbps", 0)), exact)
                       + largenum(int(r.get("outbps", 0)), exact) + "\n")
    return "".join(out)


# -- -c -------------------------------------------------------------------------------------

def expire_str(seconds: float) -> str:
    """`%02d:%02d` of whole minutes and seconds left (minutes may pass 99)."""
    s = max(int(seconds), 0)
    return "%02d:%02d" % (s // 60, s % 60)


def format_conns(conns: Any, now: float | None = None, *, local: bool = False) -> str:
    """`ipvsadm -L -n -c`.

    Time left is the entry's `expires_in` if present, else `expires - now`
    with `now` from the argument or the body's `now` (both epoch seconds, to the
    ms: the difference is rounded to the ms before whole seconds are taken).
    `local`: add FULLNAT's laddr:lport as a column before the destination (not
    in ipvsadm).
    """
    if now is None and isinstance(conns, Mapping) and conns.get("now") is not None:
        now = float(conns["now"])
    out = ["IPVS connection entries\n"]
    if local:
        out.append("pro expire %-11s %-18s %-18s %-18s %s\n" % ("state", "source", "virtual", "local",
                                                                 "destination"))
    else:
        out.append("pro expire %-11s %-18s %-18s %s\n" % ("state", "source", "virtual", "destination"))
    for c in _conns(conns):
        if c.get("expires_in") is not None:
            left = float(c["expires_in"])
        else:
            left = round(float(c.get("expires", 0)) - (now or 0.0), 3)
        proto = str(c.get("proto", "")).upper()
        state = str(c.get("state", "")) if proto == "TCP" else proto
        # the API leaves the client out unless asked with its token (--token)
        client = _reformat(c["client"]) if c.get("client") is not None else "hidden"
        cols = [client, _reformat(c["vip"])]
        if local:
            cols.append(_reformat(c["local"]))
        cols.append(_reformat(c["real"]))
        fmt = "%-3s %-6s %-11s" + " %-18s" * (len(cols) - 1) + " %s\n"
        out.append(fmt % (proto, expire_str(left), state, *cols))
    return "".join(out)


# -- -S -n ------------------------------------------------------------------------------------

def format_save(services: Any, *, fullnat_switch: str = "-b", laddrs: bool = False,
                nosort: bool = False) -> str:
    """`ipvsadm -S -n`: one `-A` line per service, one `-a` line per real server.

    `fullnat_switch`: what a FullNat real server gets (see the module doc).
    `laddrs`: also print the local addresses as Alibaba LVS's `-P -t VIP:port -z LADDR`.
    """
    out = []
    for s in _sorted(_services(services), nosort):
        name = svc_rule_name(s)
        line = "-A %s -s %s" % (name, s.get("scheduler", ""))
        if _persistent(s):
            line += " -p %u" % _persistent(s)
            mask = _mask(s)
            if mask is not None:
                line += f" -M {mask}"
        if s.get("pe"):
            line += f" --pe {s['pe']}"
        if s.get("ops"):
            line += " -o"
        flags = sched_flags(s)
        if flags:
            line += f" -b {flags}"
        out.append(line + "\n")
        for rs in s["real_servers"]:
            fwd = forward_name(rs)
            switch = fullnat_switch if fwd == "FullNat" else FORWARD_SWITCHES.get(fwd, "-g")
            out.append("-a %s -r %s %s -w %d\n" % (name, addrport(rs["addr"], int(rs["port"])),
                                                   switch, int(rs.get("weight", 0))))
        if laddrs:
            for a in s.get("laddrs", []):
                out.append(f"-P {name} -z {a}\n")
    return "".join(out)


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


def run(args: argparse.Namespace) -> int:
    """The body of `tandem ipvsadm`; returns the exit code."""
    if args.save and (args.stats or args.rate or args.connection):
        print("tandem ipvsadm: -S takes none of --stats, --rate, -c", file=sys.stderr)
        return 2
    if args.rate and not 0 < args.interval <= 60:
        print("tandem ipvsadm: --interval must be in (0, 60]", file=sys.stderr)
        return 2
    try:
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
            svcs, single = _select(_services(after), args)
            text = format_rate(svcs, before, dt, exact=args.exact, nosort=args.nosort, single=single)
        else:
            body = fetch(args.api, "/services", timeout=args.timeout, token=args.token)
            svcs, single = _select(_services(body), args)
            if args.save:
                text = format_save(svcs, fullnat_switch="-m" if args.fullnat_as_masq else "-b",
                                   laddrs=args.laddrs, nosort=args.nosort)
            elif args.stats:
                text = format_stats(svcs, exact=args.exact, nosort=args.nosort, single=single)
            else:
                text = format_list(svcs, nosort=args.nosort, single=single)
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
