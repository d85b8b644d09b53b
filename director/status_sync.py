"""The connection sync link's status contract (director.status), built strictly from the
running link (tandem.ha.SyncLink)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from director.status_fields import counter, gauge


@dataclass(frozen=True)
class SyncLag:
    """Apply time minus send time over the last `lag_samples` DATA messages, in ms."""

    p50: float | None
    p99: float | None
    max: float | None
    samples: int

    #: quantile label -> field, for the lag gauge
    QUANTILES = (("0.5", "p50"), ("0.99", "p99"), ("1", "max"))


@dataclass(frozen=True)
class SyncStats:
    """The sync link's counters.  sender, receiver, transport and applied hold counters
    only (every key counts up from 0); lag and missing are gauges."""

    sender: Mapping[str, int] = counter("Sync sender: {key}.", "sender")
    receiver: Mapping[str, int] = counter("Sync receiver: {key}.", "receiver")
    transport: Mapping[str, int] = counter("Sync socket: {key}.", "transport")
    applied: Mapping[str, int] = counter("Synced entries the engine applied, by result: {key}.",
                                         "applied")
    missing: int = gauge("Sequence numbers from the peer still missing (being asked for again).",
                         "missing")
    lag_ms: SyncLag = field(default_factory=lambda: SyncLag(None, None, None, 0))

    @classmethod
    def of(cls, link: "SyncSource") -> "SyncStats":
        """From a running sync link (tandem.ha.SyncLink)."""
        d = dict(link.describe())
        return cls(lag_ms=SyncLag(**d.pop("lag_ms")), **d)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["lag_ms"] = dataclasses.asdict(self.lag_ms)
        for k in ("sender", "receiver", "transport", "applied"):
            out[k] = dict(out[k])
        return out


class SyncSource(Protocol):
    """A running sync link (tandem.ha.SyncLink)."""

    def describe(self) -> Mapping[str, Any]: ...

    def peer_view(self) -> Mapping[str, Any]: ...
