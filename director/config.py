"""The node's TOML config: parsed, checked and turned into typed objects.

Every key, its type, default and range is declared once, in `schema.keys`; this
module reads a document against those declarations.  Every problem is reported
as `FILE: FIELD: PROBLEM` (a ConfigError, never another exception) and nothing
is applied until the whole file is valid, so a bad file never half-changes a node.
"""
from __future__ import annotations

import ipaddress
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from director import config_rules as rules
from director import proxy_dgram, sched
from director.config_cluster import parse_cluster
from director.config_secrets import warn_if_exposed
from proto.consts import PROTOS
from schema import keys as K
from schema.core import ConfigError, Reader

__all__ = ["ConfigError", "HAConfig", "NodeConfig", "RealServerConfig", "ServiceConfig",
           "check_reloadable", "load", "parse", "restart_needed", "unicast_peers_reloadable"]

log = logging.getLogger("tandem.config")

ROLES = K.NODE["role"].choices
CHECKSUM_MODES = K.NODE["verify_checksums"].choices
_N, _L, _R = K.NODE.default, K.LIMITS.default, K.REAL_SERVER.default


@dataclass(frozen=True)
class RealServerConfig:
    addr: str
    port: int
    weight: int = _R("weight")
    u_threshold: int = _R("u_threshold")
    l_threshold: int = _R("l_threshold")


@dataclass(frozen=True)
class ServiceConfig:
    proto: str
    vip: str
    port: int
    scheduler: str
    flags: tuple[str, ...]
    laddrs: tuple[str, ...]
    real_servers: tuple[RealServerConfig, ...]
    name: str = ""
    persistent: float = 0.0        # seconds; 0 = not persistent
    persist_netmask: int = 32      # prefix length (128 for IPv6 by default)
    ops: bool = False              # one-packet scheduling (UDP only)
    health: Any = None             # director.health.HealthCheckConfig, or None
    sorry_server: tuple[str, int] | None = None   # used when no real server is up
    #: the scheduler's options (schema section scheduler.<name>), as (key, value) pairs
    scheduler_options: tuple[tuple[str, Any], ...] = ()
    forwarding: str = "engine"     # "engine" | "kernel" (docs/kernel-fast-path.md)
    #: "none" | "proxy-v1" | "proxy-v2" | "toa" (docs/client-address.md)
    client_address: str = "none"
    #: "refuse" | "pass": a client's own PROXY header (docs/client-address.md)
    client_proxy_header: str = "refuse"

    @property
    def key(self) -> str:
        return self.name or f"{self.proto}/{self.vip}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    name: str
    api_host: str
    api_port: int
    queue: int = _N("queue")
    role: str = _N("role")
    verify_checksums: str = _N("verify_checksums")
    tick: float = _N("tick")
    expire_quiescent_template: bool = _N("expire_quiescent_template")
    removed_server_conns: str = _N("removed_server_conns")
    api_token: str = field(default=_N("api_token"), repr=False)
    script_user: str = _N("script_user")
    state_dir: str = _N("state_dir")
    mode: str = _N("mode")
    timeouts: dict[str, float] = field(default_factory=K.TIMEOUTS.defaults)
    max_conns: int = _L("max_conns")
    lport_min: int = _L("lport_min")
    lport_max: int = _L("lport_max")
    services: tuple[ServiceConfig, ...] = ()
    source: str = "<config>"
    ha: "HAConfig | None" = None
    #: director.config_cluster.ClusterConfig in node.mode = "cluster", else None
    cluster: Any = None

    @property
    def vips(self) -> list[str]:
        return sorted({s.vip for s in self.services})

    @property
    def laddrs(self) -> list[str]:
        return sorted({a for s in self.services for a in s.laddrs})


def _read_all(r: Reader) -> dict[str, Any]:
    """Every declared key of the reader's section, by name."""
    return {k.name: r.take(k) for k in r.section}


def parse(doc: dict, source: str = "<config>") -> NodeConfig:
    top = Reader(source, "", doc, K.TOP)
    node = Reader(source, "node", top.get("node", dict), K.NODE)
    n = _read_all(node)
    api = n.pop("api")
    host, _, port = api.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        node.fail("api", f"must be host:port, got {api!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        node.fail("api", f"an IPv6 address is written [addr]:port, got {api!r}")
    if n["script_user"]:
        from director.scripts import lookup
        try:
            lookup(n["script_user"])
        except (KeyError, OverflowError):
            node.fail("script_user", f"no user {n['script_user']!r} on this host")
    node.finish()
    node_kw = dict(n, api_host=host.strip("[]"), api_port=int(port))

    t = Reader(source, "timeouts", top.get("timeouts", dict, {}), K.TIMEOUTS)
    timeouts = _read_all(t)
    t.finish()

    lim = Reader(source, "limits", top.get("limits", dict, {}), K.LIMITS)
    limits = _read_all(lim)
    if limits["lport_min"] > limits["lport_max"]:
        lim.fail("lport_min", f"{limits['lport_min']} is above lport_max {limits['lport_max']}")
    lim.finish()

    default_laddrs = top.take("laddrs")
    raw_services = top.take("services")
    if not raw_services:
        top.fail("services", "must list at least one service")
    services = []
    seen = set()
    for i, raw in enumerate(raw_services):
        services.append(_service(source, f"services[{i}]", raw, default_laddrs))
        k = (services[-1].proto, services[-1].vip, services[-1].port)
        if k in seen:
            raise ConfigError(source, f"services[{i}]", f"duplicate service {k[0]} {k[1]}:{k[2]}")
        seen.add(k)
    vips = sorted({sv.vip for sv in services})
    rules.addresses_keep_their_roles(source, raw_services, services)
    rules.modes_keep_their_addresses(source, raw_services, services)
    ha = _ha(source, top, vips)
    cluster = parse_cluster(source, node_kw["mode"], top, services,
                            has_vrrp=ha is not None and ha.vrrp is not None, name=node_kw["name"])
    top.finish()
    return NodeConfig(**node_kw, timeouts=timeouts, **limits,
                      services=tuple(services), source=source, ha=ha, cluster=cluster)


_I, _V = K.INTERFACES.default, K.VRRP.default


@dataclass(frozen=True)
class HAConfig:
    """Interfaces, election, sync and hooks: what makes two nodes a pair."""
    front_if: str = ""
    back_if: str = ""
    garp_count: int = _I("garp_count")
    garp_interval: float = _I("garp_interval")
    vrrp: Any = None            # ha.vrrp.VrrpConfig, or None for a fixed role
    sync: Any = None            # syncd.config.SyncConfig, or None
    notify: dict = field(default_factory=dict)     # state -> argv
    #: a (re)starting node waits this long for the peer's bulk resync before it
    #: may become master, so it never takes over with an empty table
    startup_sync_wait: float = _V("startup_sync_wait")
    #: preempting a live master: how long to let it remove its addresses (it stops
    #: advertising at once, but a loaded node takes up to ~150 ms to let go)
    preempt_yield: float = _V("preempt_yield")


def _ha(source: str, top: Reader, vips: list[str]) -> HAConfig | None:
    raw = {name: top.get(name, dict, None) for name in ("interfaces", "vrrp", "sync", "notify")}
    if all(v is None for v in raw.values()):
        return None
    kw: dict[str, Any] = {}
    if raw["interfaces"] is not None:
        i = Reader(source, "interfaces", raw["interfaces"], K.INTERFACES)
        got = _read_all(i)
        rules.interface_names(i, got)
        kw.update(front_if=got["front"], back_if=got["back"], garp_count=got["garp_count"],
                  garp_interval=got["garp_interval"])
        i.finish()
    if raw["vrrp"] is not None:
        kw.update(_vrrp(source, top, raw, vips))
    if raw["sync"] is not None:
        from syncd.config import parse_sync
        kw["sync"] = parse_sync(Reader(source, "sync", raw["sync"], K.SYNC))
    if raw["notify"] is not None:
        n = Reader(source, "notify", raw["notify"], K.NOTIFY)
        notify = {}
        for state, argv in _read_all(n).items():
            if argv is not None:
                if not argv or not all(isinstance(a, str) for a in argv):
                    n.fail(state, "must be a non-empty list of strings (argv, no shell)")
                notify[state] = tuple(argv)
        n.finish()
        kw["notify"] = notify
    return HAConfig(**kw)


def _vrrp(source: str, top: Reader, raw: dict, vips: list[str]) -> dict[str, Any]:
    from ha.vrrp import VrrpConfig
    v = Reader(source, "vrrp", raw["vrrp"], K.VRRP)
    if raw["interfaces"] is None:
        top.fail("interfaces", "is required with [vrrp] (front and back interface names)")
    got = _read_all(v)
    primary = v.address("primary_address")
    peers = tuple(v.address(f"unicast_peers[{j}]", a) for j, a in enumerate(got["unicast_peers"]))
    advertised = rules.vrrp(v, primary, peers, vips, got["advert_interval"])
    v.finish()
    try:
        vrrp = VrrpConfig(
            vrid=got["vrid"], priority=got["priority"], advert_interval=got["advert_interval"],
            addresses=advertised, primary_address=primary,
            preempt=got["preempt"], preempt_delay=got["preempt_delay"],
            nopreempt=got["nopreempt"], unicast_peers=peers)
    except ValueError as exc:          # one of its own checks that the schema has not made
        word = str(exc).split(" ", 1)[0]
        field = word if word in K.VRRP else "primary_address"
        v.fail(field, str(exc))
    return dict(vrrp=vrrp, startup_sync_wait=got["startup_sync_wait"],
                preempt_yield=got["preempt_yield"])


#: which section of the file each HAConfig field comes from
_HA_SECTION = {"front_if": "interfaces", "back_if": "interfaces", "garp_count": "interfaces",
               "garp_interval": "interfaces", "vrrp": "vrrp", "startup_sync_wait": "vrrp",
               "preempt_yield": "vrrp", "sync": "sync", "notify": "notify"}


def restart_needed(old: NodeConfig, new: NodeConfig) -> list[str]:
    """The sections that differ between two configs and that only a restart applies
    (schema: Section.restart): [interfaces], [vrrp], [sync], [cluster].  The VIP list the
    election advertises follows the services and is left out of the comparison; in cluster
    mode so are the membership keys, `[cluster] members` and `[sync] peers`, which a reload
    applies (a director joins or leaves the cluster: docs/cluster.md, "Membership changes").
    The peers only of a unicast sync: a multicast sync sends to its group and has no peers
    to change, so a change of its (unused) peers is a [sync] change like any other."""
    import dataclasses
    o, n = old.ha or HAConfig(), new.ha or HAConfig()
    members_only = old.mode == new.mode == "cluster"
    if members_only and unicast_peers_reloadable(o.sync, n.sync):
        # a cluster's membership is reloadable (a director joins or leaves): its peers
        n = dataclasses.replace(n, sync=dataclasses.replace(n.sync, peers=o.sync.peers))
    if (old.ha is None) != (new.ha is None):
        changed = {"interfaces", "vrrp", "sync"}
    else:
        changed = set()
    for name, section in _HA_SECTION.items():
        a, b = getattr(o, name), getattr(n, name)
        if name == "vrrp" and a is not None and b is not None:
            b = dataclasses.replace(b, addresses=a.addresses)
        if a != b:
            changed.add(section)
    oc, nc = old.cluster, new.cluster
    if members_only and oc is not None and nc is not None:
        nc = dataclasses.replace(nc, members=oc.members,     # and its members
                                 kernel_laddrs=oc.kernel_laddrs)
    if oc != nc:
        changed.add("cluster")
    return [s for s in K.restart_sections() if s in changed]


def unicast_peers_reloadable(old: Any, new: Any) -> bool:
    """Whether a reload may change the sync peers (of two SyncConfigs, or None): only when
    both are unicast.  The transport's set_peers refuses a multicast sync, and a reload
    refused must be refused before it applies anything (check_reloadable)."""
    return (old is not None and new is not None
            and old.mode == new.mode == "unicast")


#: the NodeConfig fields of each [node] key that only a restart applies (schema: Key.restart)
_NODE_FIELDS = {"api": ("api_host", "api_port")}


def restart_keys(old: NodeConfig, new: NodeConfig) -> list[str]:
    """The [node] keys that differ and that only a restart applies: the node's name, the
    API's address, the queue, the fixed role, the script user."""
    elected = new.ha is not None and new.ha.vrrp is not None     # node.role is not used then
    return [f"node.{k.name}" for k in K.NODE if k.restart and not (k.name == "role" and elected)
            if any(getattr(old, f) != getattr(new, f) for f in _NODE_FIELDS.get(k.name, (k.name,)))]


def check_reloadable(old: NodeConfig, new: NodeConfig) -> None:
    """Refuse (ConfigError) a reload that changes a key or a section only a restart applies."""
    changed = restart_keys(old, new) + [f"[{s}]" for s in restart_needed(old, new)]
    if changed:
        raise ConfigError(new.source, ", ".join(changed),
                          "changed, and a reload does not apply it: restart the node "
                          "(nothing was changed)")


def _host_port(r: Reader, name: str, raw: Any, family: int | None = None) -> tuple[str, int]:
    if not isinstance(raw, str):
        r.fail(name, f"must be an addr:port string, got {type(raw).__name__}")
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        r.fail(name, f"must be addr:port, got {raw!r}")
    return r.address(name, host.strip("[]"), family), int(port)


def _scheduler(s: Reader) -> tuple[str, tuple[str, ...], tuple[tuple[str, Any], ...]]:
    """The service's scheduler, loaded by name, its flags and its options (checked
    against the options the scheduler declared in the schema)."""
    name = s.take("scheduler")
    try:
        options_section = sched.options(name)
    except LookupError as exc:
        s.fail("scheduler", str(exc))
    flags = s.take("flags")
    rules.flags(s, name, flags, sched.load(name).known_flags)
    o = Reader(s.source, s.field("scheduler_options"), s.take("scheduler_options"), options_section)
    options = {k: v for k, v in _read_all(o).items() if k in o.table}
    o.finish()
    try:
        sched.create(name, frozenset(flags), **options)
    except ValueError as exc:
        s.fail("scheduler_options" if options else "flags", str(exc))
    return name, tuple(flags), tuple(sorted(options.items()))


def _service(source: str, prefix: str, raw: Any, default_laddrs: list) -> ServiceConfig:
    s = Reader(source, prefix, raw, K.SERVICE)
    proto = s.take("proto")
    vip = s.address("vip", s.take("vip"))
    family = ipaddress.ip_address(vip).version
    port = s.take("port")
    scheduler, flags, options = _scheduler(s)
    laddrs = s.take("laddrs", default_laddrs)
    if not laddrs:
        s.fail("laddrs", "a FULLNAT service needs at least one laddr (here or top-level laddrs)")
    laddrs = rules.laddrs(s, laddrs, family)
    reals = []
    raw_reals = s.take("real_servers")
    if not raw_reals:
        s.fail("real_servers", "must list at least one real server")
    for j, rr in enumerate(raw_reals):
        r = Reader(source, f"{prefix}.real_servers[{j}]", rr, K.REAL_SERVER)
        reals.append(RealServerConfig(
            addr=r.address("addr", r.take("addr"), family=family),
            port=r.take("port", port),
            weight=r.take("weight"),
            u_threshold=r.take("u_threshold"),
            l_threshold=r.take("l_threshold"),
        ))
        r.finish()
    rules.real_servers_once(s, reals, family)
    name = s.take("name")
    persistent = s.take("persistent")
    if persistent is True:
        persistent = K.PERSISTENT_TRUE
    elif persistent is False:
        persistent = 0.0
    host_bits = 32 if family == 4 else 128
    persist_netmask = s.take("persist_netmask", host_bits)
    if persist_netmask > host_bits:
        s.fail("persist_netmask", f"must be <= {host_bits} for an IPv{family} service")
    ops = s.take("ops")
    if ops and proto != "udp":
        s.fail("ops", "one-packet scheduling is only for UDP services")
    health = None
    raw_health = s.take("health")
    if raw_health is not None:
        from director.health import parse_health
        health = parse_health(raw_health, source, f"{prefix}.health")
    raw_sorry = s.take("sorry_server")
    sorry = None if raw_sorry is None else _host_port(s, "sorry_server", raw_sorry, family)
    forwarding = s.take("forwarding")
    if forwarding == "kernel" and ops:
        s.fail("forwarding", '"kernel" forwards whole flows: one-packet scheduling (ops) '
                             'needs "engine"')
    client_address = s.take("client_address")
    if client_address == "toa" and forwarding == "kernel":
        s.fail("client_address", '"toa" needs forwarding = "engine": the kernel\'s NAT cannot put '
                                 'a TCP option into a segment (docs/client-address.md)')
    if client_address != "none" and proto != "tcp" and client_address not in proxy_dgram.MODES:
        s.fail("client_address", f'"{client_address}" is for TCP services (a UDP service may '
                                 'have "proxy-v2": a header on each datagram)')
    if client_address != "none" and forwarding != "engine":
        s.fail("client_address", f'"{client_address}" needs forwarding = "engine"')
    client_proxy_header = s.take("client_proxy_header")
    s.finish()
    return ServiceConfig(proto=proto, vip=vip, port=port, scheduler=scheduler, flags=flags,
                         laddrs=laddrs, real_servers=tuple(reals), name=name,
                         persistent=float(persistent), persist_netmask=persist_netmask, ops=ops,
                         health=health, sorry_server=sorry, scheduler_options=options,
                         forwarding=forwarding, client_address=client_address,
                         client_proxy_header=client_proxy_header)


def load(path: str | Path) -> NodeConfig:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "(file)", exc.strerror or str(exc)) from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "(file)", f"not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "(syntax)", str(exc)) from None
    cfg = parse(doc, str(path))
    warn_if_exposed(path, cfg)
    return cfg
