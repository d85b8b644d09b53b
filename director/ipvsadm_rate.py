"""`ipvsadm -L -n --stats` and `--rate`: the counters and the per-second rates of a node's
services, in ipvsadm's layouts (the shared pieces are director.ipvsadm_format's)."""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from director.ipvsadm_format import (CONN_TAB_SIZE, IPVS_VERSION, RATE_COLUMNS, STATS_COLUMNS,
                                     dest_name, header_line, largenum, services_of,
                                     sorted_services, svc_name)


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
    out = [header_line(single, version, size), _title(STATS_COLUMNS)]
    for s in sorted_services(services_of(services), nosort):
        out.append("%-33s" % svc_name(s) + "".join(largenum(v, exact) for v in _svc_stats(s)) + "\n")
        for rs in s["real_servers"]:
            out.append("  -> %-28s" % dest_name(s, rs)
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
    old = {(str(s["proto"]).lower(), s["vip"], int(s["port"])): s for s in services_of(before)}
    out = []
    for s in services_of(after):
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
        svcs = services_of(services)
    elif seconds is None:
        raise ValueError("rates from two snapshots need the seconds between them")
    else:
        svcs = compute_rates(services, before, seconds)
    out = [header_line(single, version, size), _title(RATE_COLUMNS)]
    for s in sorted_services(svcs, nosort):
        r = s.get("rates") or {}
        out.append("%-33s" % svc_name(s)
                   + "".join(largenum(int(r.get(k, 0)), exact) for k in _RATE_FIELDS) + "\n")
        for rs in s["real_servers"]:
            r = rs.get("rates") or {}
            # ipvsadm: "  -> %-28s %8llu %8llu %8llu" then print_largenum twice
            out.append("  -> %-28s %8d %8d %8d" % (dest_name(s, rs), int(r.get("cps", 0)),
                                                   int(r.get("inpps", 0)), int(r.get("outpps", 0)))
                       + largenum(int(r.get("inbps", 0)), exact)
                       + largenum(int(r.get("outbps", 0)), exact) + "\n")
    return "".join(out)


