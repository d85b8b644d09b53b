"""What a director tells its BIRD 2 daemon: the prefixes it announces, as a config include.

The announcer core (ha/announce.py) decides which prefixes a director announces; this
module turns that set into the one file BIRD reads for it, and names the command that
makes BIRD read it again.  Pure text, no I/O: the adapter (ha/bird_io.py) writes the
file and runs the command.

The include holds one static protocol per address family, ``tandem_announce4`` and
``tandem_announce6``, whose routes are the announced prefixes as ``blackhole`` routes:
the director's BIRD config exports those two protocols to its BGP sessions and has no
kernel protocol, so the routes exist only to be announced and are never installed
locally (the node owns the addresses; BIRD only speaks for them).  An empty set keeps
both protocols with no routes, so a reconfigure withdraws everything and the BGP
sessions, and their BFD, stay up.

Every prefix a director announces as its own (its VIPs and laddrs; not a dead peer's
laddr it adopted) carries the large community ``OWN_COMMUNITY``.  The router sends the
tandem routes it holds back to every director (ADD-PATH: every path, not only the best),
and each director's BGP session keeps them in its import table (Adj-RIB-In), never in a
routing table: ``routed_owners`` reads from it which laddrs the router still routes via
their owner (the router's view, docs/cluster.md section 6).
"""
from __future__ import annotations

import ipaddress
from typing import Iterable

#: the static protocols of the include, by IP version: the BGP export filter names them
PROTOCOLS = {4: "tandem_announce4", 6: "tandem_announce6"}
#: the BGP large community on a route its owner announces (64512: a private AS number)
OWN_COMMUNITY = (64512, 1, 1)


def host_prefix(addr: str) -> str:
    """`addr` as the host route that announces it: a.b.c.d/32 or x::y/128.
    ValueError for anything that is not one address (or already such a host prefix)."""
    net = ipaddress.ip_network(addr, strict=True)
    if net.prefixlen != net.max_prefixlen:
        raise ValueError(f"{addr} is not a single address (/{net.max_prefixlen})")
    return str(net)


def announce_include(prefixes: Iterable[str], adopted: Iterable[str] = ()) -> str:
    """The include file announcing exactly `prefixes` (host addresses or host prefixes),
    sorted, so the same set always gives the same bytes (a rewrite of an unchanged
    file can be skipped); every one but the `adopted` carries OWN_COMMUNITY."""
    by_version: dict[int, list] = {4: [], 6: []}
    foreign = {ipaddress.ip_network(host_prefix(p)) for p in adopted}
    tag = " {{ bgp_large_community.add(({}, {}, {})); }}".format(*OWN_COMMUNITY)
    for p in prefixes:
        net = ipaddress.ip_network(host_prefix(p))
        by_version[net.version].append(net)
    lines = ["# Written by tandem: the prefixes this director announces. Do not edit;",
             "# the node rewrites it and runs `birdc configure` on every change."]
    for version, name in PROTOCOLS.items():
        lines.append(f"protocol static {name} {{")
        lines.append(f"  ipv{version};")
        for net in sorted(set(by_version[version])):
            lines.append(f"  route {net} blackhole{'' if net in foreign else tag};")
        lines.append("}")
    return "\n".join(lines) + "\n"


def export_filter(version: int) -> str:
    """The export clause of a BGP channel that announces the include's routes only."""
    return f'export where proto = "{PROTOCOLS[version]}";'


def reconfigure_argv(socket_path: str) -> list[str]:
    """The command that makes BIRD re-read its config (and so the include)."""
    return ["birdc", "-s", socket_path, "configure"]


def reconfigured(output: str) -> bool:
    """Whether `birdc configure`'s output says the new config was taken
    ("Reconfigured", "Reconfiguration in progress"), not refused (a parse error)."""
    return any(w in output for w in ("Reconfigured", "Reconfiguration in progress"))


def protocols_argv(socket_path: str) -> list[str]:
    """The command that lists BIRD's protocols and their states."""
    return ["birdc", "-s", socket_path, "show", "protocols"]


def bgp_established(output: str) -> bool:
    """Whether `birdc show protocols` lists a BGP session that is up and Established
    (rows `NAME BGP TABLE STATE SINCE INFO`): only then does what BIRD announces reach a
    router."""
    return bool(established_sessions(output))


#: the BGP channels whose import table holds the router's view, by IP version
CHANNELS = {4: "ipv4", 6: "ipv6"}


def established_sessions(output: str) -> list[str]:
    """The BGP protocols that `birdc show protocols` lists up and Established."""
    return [cols[0] for cols in map(str.split, output.splitlines())
            if len(cols) >= 4 and cols[1] == "BGP" and cols[3] == "up" and "Established" in cols[4:]]


def owned_routes_argv(socket_path: str, protocol: str, version: int = 4) -> list[str]:
    """The command that lists the routes of BGP session `protocol`'s import table that
    carry OWN_COMMUNITY: what the router routes via their owners."""
    return ["birdc", "-s", socket_path, "show", "route", "import", "table",
            f"{protocol}.{CHANNELS[version]}", "where",
            "bgp_large_community", "~", "[({}, {}, {})]".format(*OWN_COMMUNITY)]


def routes_listed(output: str) -> frozenset[str] | None:
    """The prefixes of a `birdc show route ...` answer (a route per line that starts with
    its prefix; further paths and attributes are indented), or None if BIRD did not list
    a table (an error: no such table, no import table on that channel, no daemon)."""
    lines = output.splitlines()
    if not any(ln.startswith("Table ") for ln in lines):
        return None
    found = set()
    for ln in lines:
        first = ln.split(maxsplit=1)[0] if ln and not ln[0].isspace() else ""
        try:
            found.add(str(ipaddress.ip_network(first)))
        except ValueError:
            continue
    return frozenset(found)
