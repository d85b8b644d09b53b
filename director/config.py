"""The node's TOML config: parsed, checked and turned into typed objects.

Every problem is reported as `FILE: FIELD: PROBLEM` and nothing is applied
until the whole file is valid, so a bad file never half-changes a node.
"""
from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from director import sched
from director.tcp_state import DEFAULT_TIMEOUTS
from proto.consts import PROTOS

ROLES = ("master", "backup")
CHECKSUM_MODES = ("new", "all", "none")


class ConfigError(ValueError):
    def __init__(self, source: str, field: str, problem: str) -> None:
        super().__init__(f"{source}: {field}: {problem}")
        self.source, self.field, self.problem = source, field, problem


@dataclass(frozen=True)
class RealServerConfig:
    addr: str
    port: int
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0


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

    @property
    def key(self) -> str:
        return self.name or f"{self.proto}/{self.vip}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    name: str
    api_host: str
    api_port: int
    queue: int = 0
    role: str = "master"
    verify_checksums: str = "new"
    tick: float = 0.1
    expire_quiescent_template: bool = False
    removed_server_conns: str = "expire"
    api_token: str = field(default="", repr=False)
    timeouts: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    max_conns: int = 1_000_000
    lport_min: int = 5000
    lport_max: int = 65535
    services: tuple[ServiceConfig, ...] = ()
    source: str = "<config>"
    ha: "HAConfig | None" = None

    @property
    def vips(self) -> list[str]:
        return sorted({s.vip for s in self.services})

    @property
    def laddrs(self) -> list[str]:
        return sorted({a for s in self.services for a in s.laddrs})


class _Reader:
    """Typed access to one table of the document, naming the field on error."""

    def __init__(self, source: str, prefix: str, table: Any) -> None:
        self.source, self.prefix = source, prefix
        if not isinstance(table, dict):
            self.fail("", "must be a table")
        self.table = table
        self.used: set[str] = set()

    def fail(self, key: str, problem: str):
        name = f"{self.prefix}.{key}" if self.prefix and key else (self.prefix or key)
        raise ConfigError(self.source, name, problem)

    def get(self, key: str, kind: type | tuple, default: Any = ..., *, lo=None, hi=None):
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                self.fail(key, "is required")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            self.fail(key, f"must be {kinds[0].__name__}, not a boolean")
        if not isinstance(value, kinds):
            if float in kinds and isinstance(value, int):
                value = float(value)
            else:
                self.fail(key, f"must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
        if lo is not None and value < lo:
            self.fail(key, f"must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            self.fail(key, f"must be <= {hi}, got {value}")
        return value

    def choice(self, key: str, options, default: Any = ...):
        value = self.get(key, str, default)
        if value not in options:
            self.fail(key, f"must be one of {', '.join(options)}, got {value!r}")
        return value

    def address(self, key: str, value: Any = ..., family: int | None = None) -> str:
        raw = self.get(key, str) if value is ... else value
        try:
            ip = ipaddress.ip_address(raw)
        except ValueError:
            self.fail(key, f"{raw!r} is not an IP address")
        if family and ip.version != family:
            self.fail(key, f"{raw} is IPv{ip.version}, the service is IPv{family}")
        return str(ip)

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            self.fail(unknown[0], "unknown key (misspelt?)")


def parse(doc: dict, source: str = "<config>") -> NodeConfig:
    top = _Reader(source, "", doc)
    node = _Reader(source, "node", top.get("node", dict))
    name = node.get("name", str)
    api = node.get("api", str, "127.0.0.1:9100")
    host, _, port = api.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        node.fail("api", f"must be host:port, got {api!r}")
    node_kw = dict(
        name=name, api_host=host.strip("[]"), api_port=int(port),
        queue=node.get("queue", int, 0, lo=0, hi=65535),
        role=node.choice("role", ROLES, "master"),
        verify_checksums=node.choice("verify_checksums", CHECKSUM_MODES, "new"),
        tick=node.get("tick", float, 0.1, lo=0.001, hi=10.0),
        expire_quiescent_template=node.get("expire_quiescent_template", bool, False),
        removed_server_conns=node.choice("removed_server_conns", ("expire", "keep"), "expire"),
        api_token=node.get("api_token", str, ""),
    )
    node.finish()

    t = _Reader(source, "timeouts", top.get("timeouts", dict, {}))
    timeouts = {k: t.get(k, float, float(v), lo=0.001) for k, v in DEFAULT_TIMEOUTS.items()}
    t.finish()

    lim = _Reader(source, "limits", top.get("limits", dict, {}))
    max_conns = lim.get("max_conns", int, 1_000_000, lo=1)
    lport_min = lim.get("lport_min", int, 5000, lo=1024, hi=65535)
    lport_max = lim.get("lport_max", int, 65535, lo=1024, hi=65535)
    if lport_min > lport_max:
        lim.fail("lport_min", f"{lport_min} is above lport_max {lport_max}")
    lim.finish()

    default_laddrs = top.get("laddrs", list, [])
    raw_services = top.get("services", list)
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
    ha = _ha(source, top, vips)
    top.finish()
    return NodeConfig(**node_kw, timeouts=timeouts, max_conns=max_conns,
                      lport_min=lport_min, lport_max=lport_max,
                      services=tuple(services), source=source, ha=ha)


@dataclass(frozen=True)
class HAConfig:
    """Interfaces, election, sync and hooks: what makes two nodes a pair."""
    front_if: str = ""
    back_if: str = ""
    garp_count: int = 3
    garp_interval: float = 0.05
    vrrp: Any = None            # ha.vrrp.VrrpConfig, or None for a fixed role
    sync: Any = None            # syncd.config.SyncConfig, or None
    notify: dict = field(default_factory=dict)     # state -> argv
    #: a (re)starting node waits this long for the peer's bulk resync before it
    #: may become master, so it never takes over with an empty table
    startup_sync_wait: float = 1.0
    #: preempting a live master: how long to let it remove its addresses (it stops
    #: advertising at once, but a loaded node takes up to ~150 ms to let go)
    preempt_yield: float = 0.3


def _ha(source: str, top: _Reader, vips: list[str]) -> HAConfig | None:
    import dataclasses
    raw_if = top.get("interfaces", dict, None)
    raw_vrrp = top.get("vrrp", dict, None)
    raw_sync = top.get("sync", dict, None)
    raw_notify = top.get("notify", dict, None)
    if raw_if is None and raw_vrrp is None and raw_sync is None and raw_notify is None:
        return None
    kw: dict[str, Any] = {}
    if raw_if is not None:
        i = _Reader(source, "interfaces", raw_if)
        kw.update(front_if=i.get("front", str), back_if=i.get("back", str),
                  garp_count=i.get("garp_count", int, 3, lo=0, hi=100),
                  garp_interval=i.get("garp_interval", float, 0.05, lo=0.0, hi=10.0))
        i.finish()
    if raw_vrrp is not None:
        from ha.vrrp import VrrpConfig
        v = _Reader(source, "vrrp", raw_vrrp)
        if raw_if is None:
            top.fail("interfaces", "is required with [vrrp] (front and back interface names)")
        try:
            kw["vrrp"] = VrrpConfig(
                vrid=v.get("vrid", int, lo=1, hi=255),
                priority=v.get("priority", int, 100, lo=1, hi=255),
                advert_interval=v.get("advert_interval", float, 0.1, lo=0.01, hi=40.95),
                addresses=tuple(vips),
                primary_address=v.address("primary_address"),
                preempt=v.get("preempt", bool, True),
                preempt_delay=v.get("preempt_delay", float, 0.0, lo=0.0),
                nopreempt=v.get("nopreempt", bool, False),
                unicast_peers=tuple(v.address(f"unicast_peers[{j}]", a)
                                    for j, a in enumerate(v.get("unicast_peers", list, []))),
            )
        except ValueError as exc:
            raise ConfigError(source, "vrrp", str(exc)) from None
        kw["startup_sync_wait"] = v.get("startup_sync_wait", float, 1.0, lo=0.0, hi=60.0)
        kw["preempt_yield"] = v.get("preempt_yield", float, 0.3, lo=0.0, hi=10.0)
        v.finish()
    if raw_sync is not None:
        from syncd.config import SyncConfig
        sy = _Reader(source, "sync", raw_sync)
        fields = {f.name: f for f in dataclasses.fields(SyncConfig)}
        skw: dict[str, Any] = {}
        for name in list(raw_sync):
            if name not in fields:
                continue
            default = fields[name].default
            if name == "key":
                key = sy.get("key", str)
                skw["key"] = bytes.fromhex(key[4:]) if key.startswith("hex:") else key.encode()
                if len(skw["key"]) < 16:
                    sy.fail("key", "must be at least 16 bytes (a shared secret; 'hex:...' for raw bytes)")
            elif name == "peers":
                peers = []
                for j, p in enumerate(sy.get("peers", list)):
                    host, _, port = str(p).rpartition(":")
                    if not host or not port.isdigit():
                        sy.fail(f"peers[{j}]", f"must be host:port, got {p!r}")
                    peers.append((sy.address(f"peers[{j}]", host.strip("[]")), int(port)))
                skw["peers"] = tuple(peers)
            elif isinstance(default, bool):
                skw[name] = sy.get(name, bool)
            elif isinstance(default, float):
                skw[name] = sy.get(name, float)
            elif isinstance(default, int):
                skw[name] = sy.get(name, int)
            else:
                skw[name] = sy.get(name, str)
        if "key" not in skw:
            sy.fail("key", "is required (the pair's shared secret, at least 16 bytes)")
        sy.finish()
        try:
            kw["sync"] = SyncConfig(**skw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(source, "sync", str(exc)) from None
    if raw_notify is not None:
        n = _Reader(source, "notify", raw_notify)
        notify = {}
        for state in ("master", "backup", "fault"):
            argv = n.get(state, list, None)
            if argv is not None:
                if not argv or not all(isinstance(a, str) for a in argv):
                    n.fail(state, "must be a non-empty list of strings (argv, no shell)")
                notify[state] = tuple(argv)
        n.finish()
        kw["notify"] = notify
    return HAConfig(**kw)


def _service(source: str, prefix: str, raw: Any, default_laddrs: list) -> ServiceConfig:
    s = _Reader(source, prefix, raw)
    proto = s.choice("proto", tuple(PROTOS))
    vip = s.address("vip")
    family = ipaddress.ip_address(vip).version
    port = s.get("port", int, lo=1, hi=65535)
    scheduler = s.get("scheduler", str, "wlc")
    if scheduler not in sched.names():
        s.fail("scheduler", f"unknown scheduler {scheduler!r} (known: {', '.join(sched.names())})")
    flags = tuple(s.get("flags", list, []))
    try:
        sched.create(scheduler, frozenset(flags))
    except ValueError as exc:
        s.fail("flags", str(exc))
    laddrs = s.get("laddrs", list, default_laddrs)
    if not laddrs:
        s.fail("laddrs", "a FULLNAT service needs at least one laddr (here or top-level laddrs)")
    laddrs = tuple(s.address(f"laddrs[{j}]", a, family) for j, a in enumerate(laddrs))
    reals = []
    raw_reals = s.get("real_servers", list)
    if not raw_reals:
        s.fail("real_servers", "must list at least one real server")
    for j, rr in enumerate(raw_reals):
        r = _Reader(source, f"{prefix}.real_servers[{j}]", rr)
        reals.append(RealServerConfig(
            addr=r.address("addr", family=family),
            port=r.get("port", int, port, lo=1, hi=65535),
            weight=r.get("weight", int, 1, lo=0, hi=65535),
            u_threshold=r.get("u_threshold", int, 0, lo=0),
            l_threshold=r.get("l_threshold", int, 0, lo=0),
        ))
        r.finish()
    name = s.get("name", str, "")
    persistent = s.get("persistent", (bool, float), 0.0)
    if persistent is True:
        persistent = 300.0          # ipvsadm -p with no timeout
    elif persistent is False:
        persistent = 0.0
    elif persistent < 0:
        s.fail("persistent", f"must be >= 0 seconds, got {persistent}")
    persist_netmask = s.get("persist_netmask", int, 32 if family == 4 else 128,
                            lo=0, hi=32 if family == 4 else 128)
    ops = s.get("ops", bool, False)
    if ops and proto != "udp":
        s.fail("ops", "one-packet scheduling is only for UDP services")
    health = None
    raw_health = s.get("health", dict, None)
    if raw_health is not None:
        from director.health import parse_health
        health = parse_health(raw_health, source, f"{prefix}.health")
    sorry = None
    raw_sorry = s.get("sorry_server", str, None)
    if raw_sorry is not None:
        host, _, sport = raw_sorry.rpartition(":")
        if not host or not sport.isdigit() or not 0 < int(sport) < 65536:
            s.fail("sorry_server", f"must be addr:port, got {raw_sorry!r}")
        sorry = (s.address("sorry_server", host.strip("[]"), family), int(sport))
    s.finish()
    return ServiceConfig(proto=proto, vip=vip, port=port, scheduler=scheduler, flags=flags,
                         laddrs=laddrs, real_servers=tuple(reals), name=name,
                         persistent=float(persistent), persist_netmask=persist_netmask, ops=ops,
                         health=health, sorry_server=sorry)


def load(path: str | Path) -> NodeConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), "(file)", exc.strerror or str(exc)) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "(syntax)", str(exc)) from None
    return parse(doc, str(path))
