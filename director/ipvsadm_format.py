"""A node's tables printed exactly as ipvsadm prints them (the layouts of `tandem ipvsadm`).

Pure functions turn the status API's JSON into ipvsadm 1.31's layouts, so the
muscle memory, the screen-scraping scripts and the runbooks of LVS operators
keep working:

    format_list(services)             ipvsadm -L -n
    format_stats(services)            ipvsadm -L -n --stats   (director.ipvsadm_rate)
    format_rate(services, before, dt) ipvsadm -L -n --rate    (director.ipvsadm_rate)
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
"""
from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping

from proto.consts import PROTOS

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

def services_of(body: Any) -> list[Mapping]:
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


def sorted_services(services: Iterable[Mapping], nosort: bool) -> list[Mapping]:
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


def dest_name(svc: Mapping, rs: Mapping) -> str:
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


def header_line(single: bool, version: str, size: int) -> str:
    # list_service (one service asked for) prints no version line; list_all does
    return "" if single else version_line(version, size)


# -- -L -n ------------------------------------------------------------------------------

def format_list(services: Any, *, version: str = IPVS_VERSION, size: int = CONN_TAB_SIZE,
                nosort: bool = False, single: bool = False) -> str:
    """`ipvsadm -L -n`.  `single`: the layout of `ipvsadm -L -n -t VIP:port`."""
    out = [header_line(single, version, size), TITLE_LIST]
    for s in sorted_services(services_of(services), nosort):
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
                dest_name(s, rs), forward_name(rs), int(rs.get("weight", 0)),
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
    for s in sorted_services(services_of(services), nosort):
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


