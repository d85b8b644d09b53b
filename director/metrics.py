"""Prometheus metrics for a director node, computed at scrape time.

`TandemCollector` is a prometheus_client custom collector: nothing is counted
twice and nothing sits on the packet path; every scrape reads the engine's own
counters (the per-real-server ones IPVS keeps, the engine's drop reasons, the
connection table), the kernel's NFQUEUE counters and, if given, the sync
daemon's counters, and turns them into metric families.

Names follow what people already scrape, with a `tandem_` prefix:

* node_exporter's IPVS collector: `tandem_ipvs_connections_total`,
  `tandem_ipvs_{incoming,outgoing}_{packets,bytes}_total` (node-wide) and the
  per-backend gauges `tandem_ipvs_backend_connections_{active,inactive}` and
  `tandem_ipvs_backend_weight`, with node_exporter's labels `local_address,
  local_port, remote_address, remote_port, proto, local_mark` (proto is `TCP` /
  `UDP` as /proc/net/ip_vs spells it, local_mark is "" as there are no fwmark
  services).  node_exporter has no per-backend counters; tandem adds
  `tandem_ipvs_backend_{connections,incoming_packets,outgoing_packets,
  incoming_bytes,outgoing_bytes}_total` with the same labels.
* keepalived-exporter's `keepalived_vrrp_state{iname,intf,vrid,ip_address}` as
  `tandem_vrrp_state`, same numeric encoding (0 INIT, 1 BACKUP, 2 MASTER,
  3 FAULT, 97 DELETED, 98 STOP) and labels; VRRP counters, if the node state
  carries keepalived-style `vrrp_stats`, under the exporter's names
  (`tandem_vrrp_advertisements_received_total`, ...).
* the engine: `tandem_engine_packets_total`, `tandem_engine_drops_total{reason}`
  (every reason, zeros included, so rate() works from the first scrape),
  `tandem_engine_conns` and friends.
* the kernel queue: `tandem_nfqueue_dropped_total`,
  `tandem_nfqueue_user_dropped_total`, `tandem_nfqueue_queued` `{queue}`.
* sync: `tandem_sync_apply_*_total` from the engine's sync_stats, and
  `tandem_sync_<section>_<key>_total` from the sync daemon's stats dict.

The node-wide IPVS totals are sums over real servers.  So that a reload which
removes a real server does not make them go backwards (a counter reset to
rate()), the collector keeps what removed servers had counted.
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from director.nfqueue import kernel_queue_stats

try:    # the classic text format: what every Prometheus, 2.x included, scrapes
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as CONTENT_TYPE
except ImportError:     # prometheus_client < 0.22, where LATEST is 0.0.4
    from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE

log = logging.getLogger("tandem.metrics")

PREFIX = "tandem"

#: node_exporter's backend labels, in its order.
BACKEND_LABELS = ("local_address", "local_port", "remote_address", "remote_port", "proto",
                  "local_mark")

#: keepalived-exporter's labels for keepalived_vrrp_state.
VRRP_LABELS = ("iname", "intf", "vrid", "ip_address")

#: keepalived's VRRP_STATE_* numbers (vrrp.h), which the exporter exposes as is.
VRRP_STATES = {"init": 0, "backup": 1, "master": 2, "fault": 3, "deleted": 97, "stop": 98}

#: keepalived JSON stats keys -> mehdy/keepalived-exporter metric names (without prefix).
VRRP_STAT_NAMES = {
    "advert_rcvd": "advertisements_received",
    "advert_sent": "advertisements_sent",
    "become_master": "become_master",
    "release_master": "release_master",
    "packet_len_err": "packet_length_errors",
    "advert_interval_err": "advertisements_interval_errors",
    "ip_ttl_err": "ip_ttl_errors",
    "invalid_type_rcvd": "invalid_type_received",
    "addr_list_err": "address_list_errors",
    "invalid_authtype": "authentication_invalid",
    "authtype_mismatch": "authentication_mismatch",
    "auth_failure": "authentication_failure",
    "pri_zero_rcvd": "priority_zero_received",
    "pri_zero_sent": "priority_zero_sent",
}

# node_exporter's help texts for the node-wide counters
_TOTALS = (
    ("connections", "conns_total", "The total number of connections made."),
    ("incoming_packets", "packets_in", "The total number of incoming packets."),
    ("outgoing_packets", "packets_out", "The total number of outgoing packets."),
    ("incoming_bytes", "bytes_in", "The total amount of incoming data."),
    ("outgoing_bytes", "bytes_out", "The total amount of outgoing data."),
)

_ENGINE_COUNTERS = (
    ("conns_created", "conns_new", "Connections opened by this node's scheduler."),
    ("conns_expired", "conns_expired", "Connections that timed out."),
    ("conns_reused", "conns_reused", "Closing connections re-opened by a new SYN (conn_reuse_mode)."),
    ("early_drops", "early_drops", "Unassured connections dropped to make room at max_conns."),
    ("icmp_errors", "icmp_errors", "ICMP errors translated for a known connection."),
    ("passed_local", "passed_local", "Packets to a VIP or laddr left to the host (ICMP echo etc.)."),
)

#: a sync stats value is a counter unless its key ends with one of these or is named here
_GAUGE_SUFFIXES = ("_seconds", "_len", "_size", "_peers")
_GAUGE_KEYS = {"epoch", "seq", "lag", "peers"}


def _proto_label(proto: Any) -> str:
    """ /proc/net/ip_vs spells protocols in capitals: TCP, UDP."""
    return str(proto).upper()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Retired:
    """Counters of real servers no longer configured, kept so totals never decrease.

    A dest removed by a reload may still carry connections (removed_server_conns
    = "keep") and go on counting; it is watched until its last connection is
    gone, then its final figures are folded into `totals` and it is forgotten.
    """

    FIELDS = ("conns_total", "packets_in", "packets_out", "bytes_in", "bytes_out")

    def __init__(self) -> None:
        self.totals = dict.fromkeys(self.FIELDS, 0)
        self.seen: dict[int, Any] = {}          # id(dest) -> dest, for every dest ever scraped

    def update(self, current: Iterable[Any]) -> list[Any]:
        """Note the dests in service now; return the removed ones still counting."""
        now = {id(d): d for d in current}
        lingering = []
        for key, d in list(self.seen.items()):
            if key in now:
                continue
            if getattr(d, "active", 0) or getattr(d, "inactive", 0):
                lingering.append(d)
            else:
                for f in self.FIELDS:
                    self.totals[f] += getattr(d, f, 0)
                del self.seen[key]
        self.seen.update(now)
        return lingering


class TandemCollector(Collector):
    """Yields the node's metrics from its live objects at every scrape.

    engine:      a director.engine.Engine
    node_state:  () -> dict with keys such as node, role ("master"|"backup"|...),
                 state (keepalived's number; wins over role), priority,
                 effective_priority, vrid, iname/instance, intf/interface,
                 vips (list of "addr" or "addr/len" strings), vrrp_stats (keepalived
                 JSON stats keys, see VRRP_STAT_NAMES).  Missing keys are left out.
    queue_stats: () -> kernel_queue_stats()-shaped dict; default reads the kernel's
                 counters for engine.cfg.queue.
    sync_stats:  () -> dict of sync daemon counters, flat or one level nested by
                 section ({"sender": {...}, "receiver": {...}}) -> tandem_sync_<key>_total /
                 tandem_sync_<section>_<key>_total; a key ending in _seconds, _len, _size or
                 _peers (or named epoch, seq, lag, peers) is a gauge.  None = none.
    health:      () -> {(service_name, addr, port): up} from director.health; None = none.
    """

    def __init__(self, engine, node_state_fn: Callable[[], Mapping[str, Any]] | None = None, *,
                 queue_stats: Callable[[], Mapping[str, int]] | None = None,
                 sync_stats: Callable[[], Mapping[str, Any]] | None = None,
                 health: Callable[[], Mapping[tuple, bool]] | None = None,
                 prefix: str = PREFIX) -> None:
        self.engine = engine
        self.node_state_fn = node_state_fn or (lambda: {})
        if queue_stats is None:
            queue_stats = lambda: kernel_queue_stats(engine.cfg.queue)  # noqa: E731
        self.queue_stats_fn = queue_stats
        self.sync_stats_fn = sync_stats
        self.health_fn = health
        self.prefix = prefix
        self._retired = _Retired()

    def describe(self) -> list[Metric]:
        # Registering must not run a scrape; names are dynamic (sync sections).
        return []

    def collect(self) -> Iterable[Metric]:
        p = self.prefix
        out: list[Metric] = []
        for part in (self._ipvs, self._vrrp, self._engine, self._queue, self._sync):
            try:
                out.extend(part(p))
            except Exception:       # a broken source must not take the whole scrape down
                log.exception("metrics: %s failed", part.__name__)
        yield from out

    # -- IPVS (node_exporter names) ------------------------------------------------

    def _ipvs(self, p: str) -> list[Metric]:
        rows = []       # (labels, dest, service name)
        for svc in list(self.engine.services.values()):
            cfg = svc.cfg
            for d in list(svc.dests):
                labels = [cfg.vip, str(cfg.port), d.addr_str, str(d.port), _proto_label(cfg.proto), ""]
                rows.append((labels, d, svc.name))
        lingering = self._retired.update(d for _, d, _ in rows)

        fams = []
        for name, field, doc in _TOTALS:
            total = (sum(getattr(d, field) for _, d, _ in rows)
                     + sum(getattr(d, field) for d in lingering)
                     + self._retired.totals[field])
            fams.append(CounterMetricFamily(f"{p}_ipvs_{name}", doc, value=total))

        def backend(name, doc, kind=GaugeMetricFamily):
            return kind(f"{p}_ipvs_backend_{name}", doc, labels=BACKEND_LABELS)

        active = backend("connections_active", "The current active connections by local and remote address.")
        inactive = backend("connections_inactive", "The current inactive connections by local and remote address.")
        weight = backend("weight", "The current backend weight by local and remote address.")
        overloaded = backend("overloaded", "1 while the backend is over its upper connection threshold.")
        persist = backend("persistent_templates", "Persistence templates pinning clients to the backend.")
        counters = [(backend(name, doc, CounterMetricFamily), field) for name, field, doc in (
            ("connections", "conns_total", "Connections scheduled to the backend."),
            ("incoming_packets", "packets_in", "Packets from clients forwarded to the backend."),
            ("outgoing_packets", "packets_out", "Packets from the backend forwarded to clients."),
            ("incoming_bytes", "bytes_in", "Bytes from clients forwarded to the backend."),
            ("outgoing_bytes", "bytes_out", "Bytes from the backend forwarded to clients."),
        )]
        seen = set()
        for labels, d, _ in rows:
            key = tuple(labels)
            if key in seen:     # same backend twice in one service: node_exporter would sum; keep first
                continue
            seen.add(key)
            active.add_metric(labels, d.active)
            inactive.add_metric(labels, d.inactive)
            weight.add_metric(labels, d.weight)
            overloaded.add_metric(labels, 1 if d.overloaded else 0)
            persist.add_metric(labels, d.persist)
            for fam, field in counters:
                fam.add_metric(labels, getattr(d, field))
        fams += [active, inactive, weight, overloaded, persist] + [f for f, _ in counters]

        if self.health_fn is not None:
            states = self.health_fn() or {}
            up = backend("up", "1 if the backend passes its health check, 0 if not.")
            for labels, d, svc_name in rows:
                state = states.get((svc_name, d.addr_str, d.port))
                if state is not None and tuple(labels) in seen:
                    up.add_metric(labels, 1 if state else 0)
            fams.append(up)
        return fams

    # -- VRRP (keepalived-exporter names) ------------------------------------------

    def _vrrp(self, p: str) -> list[Metric]:
        st = dict(self.node_state_fn() or {})
        fams: list[Metric] = []
        node = st.get("node")
        if node is not None:
            info = GaugeMetricFamily(f"{p}_node_info", "The node's name (always 1).", labels=("node",))
            info.add_metric([str(node)], 1)
            fams.append(info)
        state = st.get("state")
        if not _is_number(state):
            role = str(st.get("role") or state or "").lower()
            state = VRRP_STATES.get(role)
        if state is None:
            return fams
        vrid = st.get("vrid")
        iname = str(st.get("iname") or st.get("instance") or (f"VI_{vrid}" if vrid is not None else node or ""))
        intf = str(st.get("intf") or st.get("interface") or "")
        vrid_s = "" if vrid is None else str(vrid)
        vips = [str(v).split()[0] for v in (st.get("vips") or [])] or [""]
        fam = GaugeMetricFamily(f"{p}_vrrp_state",
                                "State of the VRRP instance: 0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT.",
                                labels=VRRP_LABELS)
        for vip in vips:
            fam.add_metric([iname, intf, vrid_s, vip], state)
        fams.append(fam)
        base = ("iname", "intf", "vrid")
        for key, doc in (("priority", "Configured VRRP priority."),
                         ("effective_priority", "VRRP priority after tracking adjustments.")):
            if _is_number(st.get(key)):
                g = GaugeMetricFamily(f"{p}_vrrp_{key}", doc, labels=base)
                g.add_metric([iname, intf, vrid_s], st[key])
                fams.append(g)
        for key, value in (st.get("vrrp_stats") or {}).items():
            name = VRRP_STAT_NAMES.get(key)
            if name and _is_number(value):
                c = CounterMetricFamily(f"{p}_vrrp_{name}", f"keepalived's {key} counter.", labels=base)
                c.add_metric([iname, intf, vrid_s], value)
                fams.append(c)
        return fams

    # -- the engine --------------------------------------------------------------------

    def _engine(self, p: str) -> list[Metric]:
        eng = self.engine
        stats, drops = dict(eng.stats), dict(eng.drops)
        fams: list[Metric] = [CounterMetricFamily(f"{p}_engine_packets", "Packets the engine was handed.",
                                                  value=stats.get("packets", 0))]
        d = CounterMetricFamily(f"{p}_engine_drops", "Packets dropped by the engine, by reason.",
                                labels=("reason",))
        for reason, n in drops.items():
            d.add_metric([reason], n)
        fams.append(d)
        fw = CounterMetricFamily(f"{p}_engine_forwarded_packets",
                                 "Packets forwarded (rewritten) by direction: in = client to real server.",
                                 labels=("direction",))
        fw.add_metric(["in"], stats.get("forwarded_in", 0))
        fw.add_metric(["out"], stats.get("forwarded_out", 0))
        fams.append(fw)
        for name, key, doc in _ENGINE_COUNTERS:
            fams.append(CounterMetricFamily(f"{p}_engine_{name}", doc, value=stats.get(key, 0)))
        counts = eng.conn_counts()
        fams.append(GaugeMetricFamily(f"{p}_engine_conns", "Entries in the connection table.",
                                      value=counts["total"]))
        by = GaugeMetricFamily(f"{p}_engine_conns_by_activity",
                               "Connections bound to a real server, active (ESTABLISHED) or inactive.",
                               labels=("activity",))
        by.add_metric(["active"], counts["active"])
        by.add_metric(["inactive"], counts["inactive"])
        fams.append(by)
        fams.append(GaugeMetricFamily(f"{p}_engine_conns_max", "The connection table's limit (max_conns).",
                                      value=eng.table.max_conns))
        fams.append(GaugeMetricFamily(f"{p}_engine_templates", "Persistence templates.",
                                      value=len(eng.templates)))
        used = GaugeMetricFamily(f"{p}_fullnat_laddr_ports_used",
                                 "Local (laddr, lport) pairs held by connections, by laddr.",
                                 labels=("laddr",))
        conflicts = 0
        per_laddr: dict[str, int] = {}
        for svc in list(eng.services.values()):
            pool = svc.laddrs
            conflicts += pool.conflicts
            for a in pool.laddrs:
                per_laddr.setdefault(str(ipaddress.ip_address(a)), 0)
            for (_proto, laddr, _daddr, _dport), n in list(pool.used.items()):
                k = str(ipaddress.ip_address(laddr))
                per_laddr[k] = per_laddr.get(k, 0) + n
        for k in sorted(per_laddr):
            used.add_metric([k], per_laddr[k])
        fams.append(used)
        fams.append(CounterMetricFamily(f"{p}_fullnat_laddr_port_conflicts",
                                        "Local ports skipped because the pair was in use.", value=conflicts))
        return fams

    # -- NFQUEUE -----------------------------------------------------------------------

    def _queue(self, p: str) -> list[Metric]:
        qs = self.queue_stats_fn() or {}
        if not qs:
            return []
        queue = str(getattr(self.engine.cfg, "queue", ""))
        fams = []
        for key, name, kind, doc in (
            ("queue_dropped", "nfqueue_dropped", CounterMetricFamily,
             "Packets the kernel dropped because our queue was full (queue_dropped)."),
            ("user_dropped", "nfqueue_user_dropped", CounterMetricFamily,
             "Packets the kernel could not send us over netlink (user_dropped: socket buffer full)."),
            ("queue_total", "nfqueue_queued", GaugeMetricFamily,
             "Packets waiting in the queue for a verdict."),
        ):
            if key in qs:
                f = kind(f"{p}_{name}", doc, labels=("queue",))
                f.add_metric([queue], qs[key])
                fams.append(f)
        return fams

    # -- sync --------------------------------------------------------------------------

    def _sync(self, p: str) -> list[Metric]:
        fams: list[Metric] = []
        names: set[str] = set()

        def add(name: str, value: Any, doc: str) -> None:
            if not _is_number(value):
                return
            gauge = name.endswith(_GAUGE_SUFFIXES) or name.rsplit("_", 1)[-1] in _GAUGE_KEYS
            gauge = gauge and not name.endswith("_total")
            base = name[:-len("_total")] if name.endswith("_total") else name
            full = f"{p}_sync_{base}"
            if full in names:
                return
            names.add(full)
            if gauge:
                fams.append(GaugeMetricFamily(full, doc, value=value))
            else:
                fams.append(CounterMetricFamily(full, doc, value=value))

        for key, value in dict(getattr(self.engine, "sync_stats", {}) or {}).items():
            add("apply" if key == "applied" else f"apply_{key}", value,
                f"Sync entries from the peer: {key}.")
        if self.sync_stats_fn is not None:
            for key, value in (self.sync_stats_fn() or {}).items():
                if isinstance(value, Mapping):
                    for k, v in value.items():
                        add(f"{key}_{k}", v, f"Sync {key}: {k}.")
                else:
                    add(str(key), value, f"Sync: {key}.")
        return fams


def render(*collectors: Collector) -> tuple[bytes, str]:
    """The text exposition of the given collectors, and its Content-Type.

    For the HTTP handler: `body, ctype = render(collector)`, then
    `web.Response(body=body, headers={"Content-Type": ctype})`.
    """
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    return generate_latest(registry), CONTENT_TYPE
