"""Rules of the config file that no single key's declaration can state: duplicates,
addresses that must differ, families that must agree, names that are not addresses.

director/config.py reads each key against the schema and calls these on what it read;
each failure is a ConfigError naming the key to change (`FILE: FIELD: PROBLEM`).
"""
from __future__ import annotations

import ipaddress
from typing import Any, Iterable

from schema.core import ConfigError, Reader

#: IFNAMSIZ - 1: the longest interface name Linux takes
IFNAME_MAX = 15


def ifname_problem(name: str) -> str | None:
    """Why `name` cannot be a Linux interface name (the kernel's dev_valid_name), if it
    cannot; an address given where the name belongs is called so."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return f"must be an interface's name (e.g. eth1), not an address, got {name!r}"
    if not name:
        return "must be an interface's name, got an empty string"
    if len(name) > IFNAME_MAX or name in (".", "..") or any(c in name for c in "/: \t\n"):
        return (f"{name!r} cannot be an interface name (at most {IFNAME_MAX} characters, "
                "no '/', ':' or spaces)")
    return None


def interface_names(r: Reader, got: dict[str, Any], names: Iterable[str] = ("front", "back")) -> None:
    for name in names:
        problem = ifname_problem(got[name])
        if problem:
            r.fail(name, problem)


def flags(s: Reader, scheduler: str, given: list, known: frozenset[str]) -> None:
    """Each flag a string the scheduler takes, once."""
    for j, f in enumerate(given):
        if not isinstance(f, str):
            s.fail(f"flags[{j}]", f"must be str, got {type(f).__name__}")
        if f not in known:
            takes = f"takes {', '.join(sorted(known))}" if known else "takes no flags"
            s.fail(f"flags[{j}]", f"scheduler {scheduler} {takes}, got {f!r}")
        if f in given[:j]:
            s.fail(f"flags[{j}]", f"{f} is listed twice")


def laddrs(s: Reader, given: list, family: int) -> tuple[str, ...]:
    """The service's laddrs, each an address of the service's family, listed once; named
    where they are written (the service's own list, or the top-level pool)."""
    own = "laddrs" in s.table
    where = s if own else Reader(s.source, "", {}, s.section)      # top-level `laddrs[j]`
    out: list[str] = []
    for j, a in enumerate(given):
        a = where.address(f"laddrs[{j}]", a, family)
        if a in out:
            where.fail(f"laddrs[{j}]", f"{a} is listed twice (laddrs[{out.index(a)}])")
        out.append(a)
    return tuple(out)


def real_servers_once(s: Reader, reals: list, family: int) -> None:
    """No real server (addr, port) twice in one service: the second would share the first's
    counters and connections under one name, and a weight change would apply to one."""
    seen: dict[tuple[str, int], int] = {}
    for j, rs in enumerate(reals):
        key = (rs.addr, rs.port)
        if key in seen:
            shown = f"[{rs.addr}]:{rs.port}" if family == 6 else f"{rs.addr}:{rs.port}"
            s.fail(f"real_servers[{j}]", f"{shown} is listed twice (real_servers[{seen[key]}])")
        seen[key] = j


def addresses_keep_their_roles(source: str, raw: list, services: list) -> None:
    """A laddr is the source real servers answer to, a real server is where the director
    sends: a VIP in either place would send the traffic back to the director (replies to the
    clients' address, or a loop), and a laddr that is a real server's address would be
    answered by that server itself.  So none is used in another role, in any service."""
    vip_of: dict[str, str] = {}
    real_of: dict[str, str] = {}
    for i, sv in enumerate(services):
        vip_of.setdefault(sv.vip, f"services[{i}].vip")
        for k, rs in enumerate(sv.real_servers):
            real_of.setdefault(rs.addr, f"services[{i}].real_servers[{k}].addr")
    for i, sv in enumerate(services):
        own = isinstance(raw[i], dict) and "laddrs" in raw[i]
        for j, a in enumerate(sv.laddrs):
            where = f"services[{i}].laddrs[{j}]" if own else f"laddrs[{j}]"
            if a in vip_of:
                raise ConfigError(source, where, f"{a} is a VIP ({vip_of[a]}): a laddr must be "
                                                 "an address of its own")
            if a in real_of:
                raise ConfigError(source, where, f"{a} is a real server ({real_of[a]}): a laddr "
                                                 "must be an address of its own")
        for k, rs in enumerate(sv.real_servers):
            if rs.addr in vip_of:
                raise ConfigError(source, f"services[{i}].real_servers[{k}].addr",
                                  f"{rs.addr} is a VIP ({vip_of[rs.addr]}): the director would "
                                  "send the traffic to itself")


def modes_keep_their_addresses(source: str, raw: list, services: list) -> None:
    """A VIP or laddr is either the engine's or the kernel's: the engine's rules take
    every packet to its addresses out of conntrack (NOTRACK), which the kernel's NAT needs,
    and the two would hand out the same (laddr, port) pairs to one real server."""
    mode_of: dict[str, tuple[str, str]] = {}
    for i, sv in enumerate(services):
        own = isinstance(raw[i], dict) and "laddrs" in raw[i]
        places = [(sv.vip, f"services[{i}].vip")] + [
            (a, f"services[{i}].laddrs[{j}]" if own else f"laddrs[{j}]")
            for j, a in enumerate(sv.laddrs)]
        for addr, where in places:
            seen = mode_of.setdefault(addr, (sv.forwarding, where))
            if seen[0] != sv.forwarding:
                raise ConfigError(source, where, f'{addr} is also used by a forwarding = '
                                                 f'"{seen[0]}" service ({seen[1]}): engine- and '
                                                 'kernel-mode services need addresses of their own')


def vrrp(v: Reader, primary: str, peers: tuple[str, ...], vips: list[str],
         advert_interval: float) -> tuple[str, ...]:
    """One VRRP instance advertises one family, to peers of that family, in centiseconds.
    The election's family is primary_address's; the VIPs of the other family are not
    advertised but move with the role all the same (keepalived's
    virtual_ipaddress_excluded: docs/architecture.md, "Dual-stack").  Returns the VIPs the
    election advertises; at least one VIP must be of its family."""
    family = ipaddress.ip_address(primary).version
    other = 6 if family == 4 else 4
    for j, p in enumerate(peers):
        if ipaddress.ip_address(p).version != family:
            v.fail(f"unicast_peers[{j}]", f"{p} is IPv{other}, primary_address is IPv{family}")
    advertised = tuple(a for a in vips if ipaddress.ip_address(a).version == family)
    if not advertised:
        v.fail("primary_address", f"{primary} is IPv{family}, and the VIPs the election "
                                  f"advertises are not (e.g. {vips[0]}): one VRRP instance "
                                  "advertises one family")
    cs = advert_interval * 100
    if abs(round(cs) - cs) > 1e-6:
        v.fail("advert_interval", f"must be in 10 ms steps, got {advert_interval:g}")
    return advertised
