"""Every knob of connection sync, with its default and the reason for it."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from proto.sync import MAC_LEN, MAX_PAYLOAD

MODES = ("multicast", "unicast")


@dataclass(frozen=True)
class SyncConfig:
    # -- identity and authentication ----------------------------------------------
    #: 0..255; a message with another sync id is dropped (counted wrong_sync_id).
    #: Unlike IPVS, 0 is not "accept all": with a shared key, a mismatch is a mistake.
    sync_id: int = 0
    #: HMAC-SHA256 key shared by the pair (>= 16 bytes); not shown in repr().
    key: bytes = field(default=b"", repr=False)

    # -- when a connection is sent (ip_vs_sync_conn_needed; see syncd.policy) ------
    threshold: int = 3              # sync_threshold[0]
    period: int = 50                # sync_threshold[1]
    refresh_period: float = 0.0     # sync_refresh_period, seconds (0 = off)
    retries: int = 0                # sync_retries, 0..3
    persist_mode: bool = False      # sync_persist_mode
    #: Send a TCP connection the moment it reaches ESTABLISHED, and at once (not
    #: after flush_delay), besides the threshold packets.  The kernel waits for the
    #: threshold packet; a failover in between loses a connection whose handshake
    #: completed, e.g. a reused client port whose old entry had passed packet 3.
    on_established: bool = True

    # -- the sender ------------------------------------------------------------------
    #: Largest datagram payload, MAC included (IPVS sync_maxlen for an IPv4 group).
    max_payload: int = MAX_PAYLOAD
    #: A partly filled DATA message goes out this long after its first entry
    #: (IPVS_SYNC_SEND_DELAY, HZ/50).
    flush_delay: float = 0.020
    #: With nothing else sent for this long, send a HEARTBEAT carrying the last
    #: seq: it reveals a lost tail of the stream and tells the peer we are alive.
    heartbeat_interval: float = 0.2
    #: Sent DATA datagrams kept for answering NACKs (a ring, per sender).
    resend_window: int = 4096
    #: The same seq is not re-sent twice within this long (several NACKs for one
    #: loss, e.g. from a periodic re-request crossing the resend).
    resend_holdoff: float = 0.020
    #: At most this many datagrams are re-sent for one NACK, and at most
    #: resend_rate per second in all (a token bucket holding resend_per_nack):
    #: what is left is asked for again by the peer's periodic re-request, so a
    #: small NACK cannot bring back the whole window or hold the loop.
    resend_per_nack: int = 256
    resend_rate: float = 5000.0
    #: Bulk resync pace, entries per second, and how often it is fed.
    bulk_rate: float = 50_000.0
    bulk_interval: float = 0.010
    #: DATA messages built but not yet handed to the socket; past this the oldest
    #: is not transmitted (it stays in the resend window, so the peer's NACK
    #: still repairs it), as IPVS drops past sync_qlen_max but without the silence.
    max_queue: int = 1024

    # -- the receiver ----------------------------------------------------------------
    #: Still-missing seqs are re-requested this often (not once: pitfall 7) ...
    nack_interval: float = 0.050
    #: ... for at most this long; then the receiver asks for a bulk resync instead.
    gap_give_up: float = 5.0
    #: An unanswered RESYNC_REQUEST is repeated after this long.
    resync_retry: float = 1.0
    #: How many sync-lag samples are kept for the p50/p99/max report.
    lag_samples: int = 1024
    #: If > 0, a message from a sender epoch not seen before is refused when its
    #: send time is older than this (seconds, wall clock; needs synchronised
    #: clocks) -- protects a freshly started receiver against old replays.
    max_age: float = 0.0

    # -- transport -------------------------------------------------------------------
    mode: str = "multicast"
    group: str = "224.0.0.81"       # IP_VS_SYNC_GROUP
    port: int = 8848                # IP_VS_SYNC_PORT (the local port in unicast mode)
    ttl: int = 1
    #: Multicast: the address of the interface to join and send on.
    interface: str = "0.0.0.0"
    #: Unicast: local address to bind, and the peers' (address, port) pairs.
    bind: str = "0.0.0.0"
    peers: tuple[tuple[str, int], ...] = ()
    #: SO_SNDBUF / SO_RCVBUF (0 = the system default).
    sock_buf: int = 1 << 20

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"sync config: {what}")

        need(0 <= self.sync_id <= 255, "sync_id must be 0..255")
        need(isinstance(self.key, bytes), "key must be bytes")
        need(self.threshold >= 0 and self.period >= 0, "threshold and period must be >= 0")
        need(self.period == 0 or self.threshold < self.period, "threshold must be < period (or period 0)")
        need(self.refresh_period >= 0, "refresh_period must be >= 0")
        need(0 <= self.retries <= 3, "retries must be 0..3")
        need(256 <= self.max_payload <= 65507, "max_payload must be 256..65507")
        need(self.max_payload > MAC_LEN + 200, "max_payload too small")
        for name in ("flush_delay", "heartbeat_interval", "bulk_interval", "nack_interval",
                     "gap_give_up", "resync_retry"):
            need(getattr(self, name) > 0, f"{name} must be > 0")
        need(self.resend_holdoff >= 0 and self.max_age >= 0, "resend_holdoff and max_age must be >= 0")
        need(self.resend_window >= 1, "resend_window must be >= 1")
        need(self.resend_per_nack >= 1 and self.resend_rate > 0, "resend_per_nack must be >= 1, resend_rate > 0")
        need(self.bulk_rate > 0, "bulk_rate must be > 0")
        need(self.max_queue >= 1 and self.lag_samples >= 1, "max_queue and lag_samples must be >= 1")
        need(self.mode in MODES, f"mode must be one of {MODES}")
        need(0 <= self.port <= 65535 and 1 <= self.ttl <= 255, "port 0..65535, ttl 1..255")
        need(self.sock_buf >= 0, "sock_buf must be >= 0")
        if self.mode == "multicast":
            need(ipaddress.ip_address(self.group).is_multicast, f"{self.group} is not a multicast group")
            need(ipaddress.ip_address(self.group).version == 4, "only an IPv4 group is supported")
            ipaddress.ip_address(self.interface)
        else:
            ipaddress.ip_address(self.bind)
            for host, port in self.peers:
                ipaddress.ip_address(host)
                need(0 < port <= 65535, f"peer port {port}")


def resolve_key(cfg: SyncConfig, key: bytes | None) -> bytes:
    """The HMAC key a sender or receiver uses: `key` if given, else the config's;
    refused when it is too short to be a secret."""
    key = cfg.key if key is None else key
    if len(key) < 16:
        raise ValueError("the sync key must be at least 16 bytes")
    return key
