"""The engine's services and real servers as metrics, under node_exporter's IPVS names
(director.metrics lists every exported name)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from director.metrics_source import PREFIX, Source

#: node_exporter's backend labels, in its order.
BACKEND_LABELS = ("local_address", "local_port", "remote_address", "remote_port", "proto",
                  "local_mark")

# node_exporter's help texts for the node-wide counters
_TOTALS = (
    ("connections", "conns_total", "The total number of connections made."),
    ("incoming_packets", "packets_in", "The total number of incoming packets."),
    ("outgoing_packets", "packets_out", "The total number of outgoing packets."),
    ("incoming_bytes", "bytes_in", "The total amount of incoming data."),
    ("outgoing_bytes", "bytes_out", "The total amount of outgoing data."),
)


def _proto_label(proto: Any) -> str:
    """ /proc/net/ip_vs spells protocols in capitals: TCP, UDP."""
    return str(proto).upper()


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


class IpvsCollector(Source):
    """The engine's services and real servers, under node_exporter's IPVS names.

    health: () -> {(service_name, addr, port): up} (from the node's control); None = none.
    """

    def __init__(self, engine, health: Callable[[], Mapping[tuple, bool]] | None = None,
                 prefix: str = PREFIX) -> None:
        super().__init__(prefix)
        self.engine = engine
        self.health_fn = health
        self._retired = _Retired()

    def families(self, p: str) -> list[Metric]:
        rows = []       # (labels, dest, service name)
        for svc in list(self.engine.services.values()):
            cfg = svc.cfg
            for d in list(svc.dests):
                labels = [cfg.vip, str(cfg.port), d.addr_str, str(d.port), _proto_label(cfg.proto), ""]
                rows.append((labels, d, svc.name))
        lingering = self._retired.update(d for _, d, _ in rows)

        fams: list[Metric] = []
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
