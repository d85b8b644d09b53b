"""Every knob of connection sync, with the reason for it; the defaults, types and
ranges are declared once in schema.keys (section [sync])."""
from __future__ import annotations

import errno
import ipaddress
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from proto.sync import MAC_LEN, MAX_PAYLOAD
from schema.core import FieldError, Reader, os_reason
from schema.keys import (SYNC, SYNC_GROUP6, SYNC_KEY_MIN_BITS, SYNC_KEY_MIN_BITS_RAW,
                         SYNC_KEY_MIN_BYTES, SYNC_MAX_PAYLOAD6)

MODES = SYNC["mode"].choices
_D = SYNC.default
assert _D("max_payload") == MAX_PAYLOAD, "schema and wire format disagree on the payload size"


@dataclass(frozen=True)
class SyncConfig:
    # -- identity and authentication ----------------------------------------------
    #: a message with another sync id is dropped (counted wrong_sync_id).
    #: Unlike IPVS, 0 is not "accept all": with a shared key, a mismatch is a mistake.
    sync_id: int = _D("sync_id")
    #: HMAC-SHA256 key shared by the pair; not shown in repr().
    key: bytes = field(default=b"", repr=False)

    # -- when a connection is sent (ip_vs_sync_conn_needed; see syncd.policy) ------
    threshold: int = _D("threshold")            # sync_threshold[0]
    period: int = _D("period")                  # sync_threshold[1]
    refresh_period: float = _D("refresh_period")    # sync_refresh_period (0 = off)
    retries: int = _D("retries")                # sync_retries
    persist_mode: bool = _D("persist_mode")     # sync_persist_mode
    #: Send a TCP connection the moment it reaches ESTABLISHED, and at once (not
    #: after flush_delay), besides the threshold packets.  The kernel waits for the
    #: threshold packet; a failover in between loses a connection whose handshake
    #: completed, e.g. a reused client port whose old entry had passed packet 3.
    on_established: bool = _D("on_established")
    #: Send a new TCP connection when its SYN is scheduled (SYN_RECV), at once.
    on_syn: bool = _D("on_syn")

    # -- the sender ------------------------------------------------------------------
    #: Largest datagram payload, MAC included (IPVS sync_maxlen for an IPv4 group).
    max_payload: int = _D("max_payload")
    #: A partly filled DATA message goes out this long after its first entry
    #: (IPVS_SYNC_SEND_DELAY, HZ/50).
    flush_delay: float = _D("flush_delay")
    #: With nothing else sent for this long, send a HEARTBEAT carrying the last
    #: seq: it reveals a lost tail of the stream and tells the peer we are alive.
    heartbeat_interval: float = _D("heartbeat_interval")
    #: When nothing followed a DATA message that carried an urgent entry for this long,
    #: it is sent once more, then HEARTBEATs follow at doubling intervals (below
    #: heartbeat_interval), as TCP's tail loss probe: when that message was the last
    #: before the master died, its loss was otherwise seen only at the next idle
    #: heartbeat, too late for a NACK to repair it.  0 = off.
    tail_probe: float = _D("tail_probe")
    #: A DATA message that carried an urgent entry is sent once more this long after it
    #: first went out, whatever followed: under loss, a repair needs the peer to see the
    #: gap, its NACK to arrive and the resend to arrive, and a master killed tens of ms
    #: after a burst of new connections may not live that long.  0 = off.
    urgent_repeat: float = _D("urgent_repeat")
    #: Sent DATA datagrams kept for answering NACKs (a ring, per sender).
    resend_window: int = _D("resend_window")
    #: The same seq is not re-sent twice within this long (several NACKs for one
    #: loss, e.g. from a periodic re-request crossing the resend).
    resend_holdoff: float = _D("resend_holdoff")
    #: At most this many datagrams are re-sent for one NACK, and at most
    #: resend_rate per second in all (a token bucket holding resend_per_nack):
    #: what is left is asked for again by the peer's periodic re-request, so a
    #: small NACK cannot bring back the whole window or hold the loop.
    resend_per_nack: int = _D("resend_per_nack")
    resend_rate: float = _D("resend_rate")
    #: Bulk resync pace, entries per second, and how often it is fed.
    bulk_rate: float = _D("bulk_rate")
    bulk_interval: float = _D("bulk_interval")
    #: DATA messages built but not yet handed to the socket; past this the oldest
    #: is not transmitted (it stays in the resend window, so the peer's NACK
    #: still repairs it), as IPVS drops past sync_qlen_max but without the silence.
    max_queue: int = _D("max_queue")

    # -- the receiver ----------------------------------------------------------------
    #: Still-missing seqs are re-requested this often (not once: a single request
    #: lost with the data would leave the gap open) ...
    nack_interval: float = _D("nack_interval")
    #: ... but a fresh gap sooner: first this long after the first NACK, then at doubling
    #: intervals up to nack_interval (a lost NACK or resend in the last tens of ms
    #: before the sender dies would otherwise get one try).  resend_holdoff stays
    #: below it, or the sender holds such a retry off.
    nack_retry: float = _D("nack_retry")
    #: ... for at most this long; then the receiver asks for a bulk resync instead.
    gap_give_up: float = _D("gap_give_up")
    #: An unanswered RESYNC_REQUEST is repeated after this long.
    resync_retry: float = _D("resync_retry")
    #: How many sync-lag samples are kept for the p50/p99/max report.
    lag_samples: int = _D("lag_samples")
    #: A gap-filling message sent more than this many seconds before the newest
    #: message of its sender's epoch (both by the sender's own clock: the pair's
    #: clocks need not agree) is not applied; a bulk resync is asked for instead.
    #: A resend window can hold messages from long ago, which a receiver that
    #: has just started must not apply.  Above gap_give_up; 0 = off.
    max_age: float = _D("max_age")
    #: The operator's overrides are sent again this often (and at once on a change,
    #: and to a peer whose new epoch was just authenticated): a lost one is made good.
    overrides_interval: float = _D("overrides_interval")

    # -- transport -------------------------------------------------------------------
    mode: str = _D("mode")
    group: str = _D("group")                    # IP_VS_SYNC_GROUP
    port: int = _D("port")                      # IP_VS_SYNC_PORT (the local port in unicast mode)
    ttl: int = _D("ttl")
    #: Multicast: the address of the interface to join and send on.  Required: ""
    #: (not given) is refused when the socket opens, and the config file must name it.
    interface: str = ""
    #: Unicast: local address to bind; "" (not given) is the back interface's
    #: address, filled in by `with_local_address` when the node starts.  Never the
    #: wildcard by default: sync data must not leave on the client side.
    bind: str = ""
    peers: tuple[tuple[str, int], ...] = ()
    #: SO_SNDBUF / SO_RCVBUF (0 = the system default).
    sock_buf: int = _D("sock_buf")

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, problem: str) -> None:
            if not ok:
                raise SyncConfigError(field, problem)

        need(isinstance(self.key, bytes), "key", "must be bytes")
        # every range is the schema's
        for key in SYNC:
            if key.name in _FIELDS and key.name not in ("key", "peers"):
                if key.name in _UNSET_OK and getattr(self, key.name) == "":
                    continue
                problem = key.check(getattr(self, key.name))
                need(problem is None, key.name, str(problem))
        need(self.period == 0 or self.threshold < self.period, "threshold",
             f"must be < period ({self.period}) unless period is 0, got {self.threshold}")
        need(self.max_payload > MAC_LEN + 200, "max_payload", f"must be > {MAC_LEN + 200}")
        need(self.max_age == 0 or self.max_age > self.gap_give_up, "max_age",
             f"must be 0 (off) or > gap_give_up ({self.gap_give_up:g}), got {self.max_age:g}")
        if self.mode == "multicast":
            group = ipaddress.ip_address(self.group)
            need(group.is_multicast, "group", f"{self.group} is not a multicast group")
            if self.interface:
                iface = ipaddress.ip_address(self.interface)
                need(iface.version == group.version, "group",
                     f"{self.group} is IPv{group.version}, and interface {self.interface} is "
                     f"IPv{iface.version}: the group is joined on an address of its own family")
        else:
            for j, (host, port) in enumerate(self.peers):
                ip = ipaddress.ip_address(host)
                need(0 < port <= 65535, f"peers[{j}]", f"port must be 1..65535, got {port}")
                need(not ip.is_link_local, f"peers[{j}]", _LINK_LOCAL.format(host))
            if self.bind:
                bind = ipaddress.ip_address(self.bind)
                need(not bind.is_link_local, "bind", _LINK_LOCAL.format(self.bind))
                for j, (host, _) in enumerate(self.peers):
                    v = ipaddress.ip_address(host).version
                    need(v == bind.version, f"peers[{j}]", f"{host} is IPv{v}, and bind "
                         f"{self.bind} is IPv{bind.version}: one socket, one family")

    @property
    def family(self) -> int:
        """4 or 6: the family of the sync socket (the group's, or the unicast peers')."""
        if self.mode == "multicast":
            return ipaddress.ip_address(self.group).version
        if self.bind:
            return ipaddress.ip_address(self.bind).version
        return ipaddress.ip_address(self.peers[0][0]).version if self.peers else 4


#: a unicast link-local address would need its interface (a scope) on every send
_LINK_LOCAL = ("{} is link-local: a unicast sync needs the back interface's global (or "
               "unique-local) address")


class SyncConfigError(FieldError):
    """A SyncConfig that cannot work: the field (as [sync] names it) and the problem."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"sync.{field}", problem)
        self.field = field


_FIELDS = set(SyncConfig.__dataclass_fields__)
#: fields whose "" means "not given" (see their comments)
_UNSET_OK = ("interface", "bind")


def with_local_address(cfg: SyncConfig, back_if: str, addresses_of) -> SyncConfig:
    """`cfg` with an unset unicast `bind` filled in: `interface` if given, else the back
    interface's first address of the peers' family (addresses_of(ifname) -> its
    addresses, in order)."""
    if cfg.mode == "multicast":
        if cfg.family == 6 and cfg.interface:
            # the IPv6 group is joined on the interface (an index), not on an address: the
            # address given must be the back interface's, as the IPv4 join checks for itself
            want = ipaddress.ip_address(cfg.interface)
            if want not in {ipaddress.ip_address(a.split("%", 1)[0]) for a in addresses_of(back_if)}:
                raise SyncConfigError("interface", f"{cfg.interface} is not an address of the back "
                                                   f"interface {back_if!r}")
        return cfg
    if cfg.bind:
        return cfg
    if cfg.interface and not ipaddress.ip_address(cfg.interface).is_unspecified:
        return replace(cfg, bind=cfg.interface)
    family = ipaddress.ip_address(cfg.peers[0][0]).version if cfg.peers else 4
    for addr in addresses_of(back_if):
        ip = ipaddress.ip_address(addr)
        if ip.version == family and not ip.is_link_local:
            return replace(cfg, bind=str(ip))
    raise SyncConfigError("bind", f"is not set, and the back interface {back_if!r} has no "
                                  f"IPv{family} address to bind the sync socket to: set sync.bind")


def socket_error(cfg: SyncConfig, exc: OSError) -> SyncConfigError:
    """The key to blame when the sync socket cannot be opened on this host, and why."""
    why = os_reason(exc)
    if exc.errno == errno.EADDRINUSE:
        return SyncConfigError("port", f"{cfg.port} is in use on this host ({why})")
    if cfg.mode == "multicast":
        return SyncConfigError("interface", f"cannot join {cfg.group} on {cfg.interface} ({why})")
    return SyncConfigError("bind", f"cannot bind the sync socket to {cfg.bind}:{cfg.port} ({why})")


def resolve_key(cfg: SyncConfig, key: bytes | None) -> bytes:
    """The HMAC key a sender or receiver uses: `key` if given, else the config's;
    refused when it is too short to be a secret."""
    key = cfg.key if key is None else key
    if len(key) < SYNC_KEY_MIN_BYTES:
        raise ValueError(f"the sync key must be at least {SYNC_KEY_MIN_BYTES} bytes")
    return key


def key_strength_bits(key: bytes) -> float:
    """A rough upper bound of a key's entropy: its length times the Shannon entropy of
    its byte distribution.  16 x "a" is 0 bits; 16 random bytes about 60; a
    30-character passphrase of a dozen distinct letters about 100."""
    if not key:
        return 0.0
    counts = Counter(key).values()
    n = len(key)
    return n * -sum(c / n * math.log2(c / n) for c in counts)


def decode_key(r: Reader, raw: str) -> bytes:
    """The HMAC key from the config's string: `hex:` and hex digits for raw bytes, else
    the passphrase's UTF-8 bytes.  Refused (never quoted) when it cannot be a secret."""
    if raw.startswith("hex:"):
        digits = raw[4:]
        try:
            key = bytes.fromhex(digits)
        except ValueError:
            r.fail("key", "'hex:' must be followed by an even number of hex digits "
                          "(the value is not shown)")
        kind, bits = "random bytes", SYNC_KEY_MIN_BITS_RAW
    else:
        key, kind, bits = raw.encode(), "bytes", SYNC_KEY_MIN_BITS
    if len(key) < SYNC_KEY_MIN_BYTES:
        r.fail("key", f"must be at least {SYNC_KEY_MIN_BYTES} {kind}, got {len(key)} "
                      "(a shared secret; 'hex:...' for raw bytes)")
    if key_strength_bits(key) < bits:
        r.fail("key", f"has too little entropy (under {bits} bits: repeated or "
                      "few distinct characters); use e.g. 'hex:' and 32 random bytes "
                      "(openssl rand -hex 32)")
    return key


def _not_an_interface_name(r: Reader, name: str) -> None:
    """`interface`/`bind` take the back interface's address: an interface's name there (as
    ipvsadm's --mcast-interface or keepalived's lvs_sync_daemon take one) is named as such."""
    raw = r.table.get(name)
    if isinstance(raw, str):
        try:
            ipaddress.ip_address(raw)
        except ValueError:
            r.fail(name, f"must be the back interface's IP address, not its name or a host name "
                         f"(got {raw!r}; [interfaces] back names the interface)")


def parse_sync(r: Reader) -> SyncConfig:
    """[sync] of the config file, read against the schema (r.section is schema SYNC)."""
    kw: dict[str, Any] = {}
    _not_an_interface_name(r, "interface")
    _not_an_interface_name(r, "bind")
    for key in r.section:
        if key.name in r.table or (not key.required and key.default is not None):
            kw[key.name] = r.take(key)
    kw["key"] = decode_key(r, r.take("key"))
    kw["peers"] = tuple(_peer(r, j, p) for j, p in enumerate(kw["peers"]))
    if kw["mode"] == "multicast":
        iface = kw.get("interface")
        if iface is None or ipaddress.ip_address(iface).is_unspecified:
            r.fail("interface", "is required for a multicast sync: the address of the back "
                                "interface (without it the kernel picks the interface by route, "
                                "and connection data could leave on the client side)")
        if "group" not in r.table and ipaddress.ip_address(iface).version == 6:
            kw["group"] = SYNC_GROUP6
        if not ipaddress.ip_address(kw["group"]).is_multicast:
            r.fail("group", f"{kw['group']} is not a multicast group")
    else:
        if not kw["peers"]:
            r.fail("peers", "a unicast sync needs at least one peer (host:port)")
        if kw.get("bind") is not None and ipaddress.ip_address(kw["bind"]).is_unspecified:
            r.fail("bind", "must be the back interface's address, not the wildcard (connection "
                           "data must not leave on the client side)")
    r.finish()
    try:
        cfg = SyncConfig(**kw)
        if cfg.family == 6 and "max_payload" not in r.table:
            cfg = replace(cfg, max_payload=SYNC_MAX_PAYLOAD6)   # IPv6's header is 20 bytes more
        return cfg
    except SyncConfigError as exc:
        r.fail(exc.field, exc.problem)


def _peer(r: Reader, j: int, raw: Any) -> tuple[str, int]:
    name = f"peers[{j}]"
    if not isinstance(raw, str):
        r.fail(name, f"must be a host:port string, got {type(raw).__name__}")
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        r.fail(name, f"must be host:port, got {raw!r}")
    return r.address(name, host.strip("[]")), int(port)
