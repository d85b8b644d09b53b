"""The connection-sync wire format: msgpack messages with an HMAC-SHA256 trailer.

Pure functions, no I/O, no clock.  One datagram is

    msgpack([version, sync_id, node_id, epoch, seq, send_time, type, flags, body]) || mac

where `mac` is the 32-byte HMAC-SHA256, under the pair's shared key, of every
byte before it.  Fields:

    version    int     VERSION (1); anything else is refused as bad_version
    sync_id    int     0..255; a receiver drops a message whose sync id is not its own
    node_id    str     the sending node's name, 1..64 characters
    epoch      int     0..2**64-1, chosen at random when the sending object starts, so a
                       restarted node is told apart from a replay of its old messages
    seq        int     0..2**64-1.  DATA: the data sequence number (1, 2, ... per epoch);
                       HEARTBEAT: the last DATA seq sent (0 if none); NACK,
                       RESYNC_REQUEST, CHALLENGE, RESPONSE and OVERRIDES: a per-epoch control
                       counter of the node (1, 2, ...), so a replayed one is recognised;
                       STATE: a per-epoch counter of its own (1, 2, ...), likewise
    send_time  float   the sender's wall clock, seconds, when the message was built
                       (a resent DATA message keeps its original time).  Only ever
                       compared with other send times of the same epoch: the pair's
                       clocks need not agree
    type       int     DATA 1, HEARTBEAT 2, NACK 3, RESYNC_REQUEST 4, CHALLENGE 5,
                       RESPONSE 6, OVERRIDES 7, STATE 8.  A type this version does not know
                       is counted as malformed and ignored (after the MAC check), so
                       a receiver older than OVERRIDES ignores those, and a newer
                       peer's kinds are ignored here
    flags      int     DATA only: F_BULK (part of a bulk resync), F_BULK_START (its
                       first message), F_BULK_END (its last); 0 otherwise
    body       DATA:           [entry, ...]                       (see SyncEntry)
               HEARTBEAT:      last_seq (int, the same as seq)
               NACK:           [target_node (str), target_epoch (int),
                                [[first, last], ...]]             (inclusive seq ranges)
               RESYNC_REQUEST: [] (every sender) or [target_node]
               CHALLENGE:      [target_node, nonce (16 bytes)]  "prove you are alive"
               RESPONSE:       [target_node, nonce, last_seq, wants_resync]: the
                               answer to target_node's CHALLENGE, from the live
                               epoch: its last DATA seq, and whether it wants
                               target_node's whole table
               OVERRIDES:      [override, ...]: operator weight/drain overrides, each
                               [service (str), addr (str, canonical), port, gen (int),
                                by (str), set_at (float, epoch s), weight (int, the weight range,
                                or nil: cleared), drain (bool)]; seq is the control
                               counter.  State, not operations: the receiver keeps, per
                               (service, addr, port), the entry with the larger (gen, by)
               STATE:          [role (str, 1..16: master, backup, fault, init),
                                priority (int 0..255, 0: no election),
                                address (str: its VRRP address, "" if none),
                                resigned (bool)]: what the node is in the pair, sent
                               on every change and repeated; how a peer tells a
                               resignation from a stop (both send VRRP priority 0)

An entry is the 14-element array

    [proto, state, flags, caddr, cport, vaddr, vport, laddr, lport, daddr, dport,
     timeout, template, in_pkts]

with addresses as packed bytes (4 or 16 long; caddr/vaddr and laddr/daddr each of
one family), ports 0..65535, flags the INACTIVE/NOOUTPUT/ASSURED bits of
director.conn, timeout in seconds (int or float, 0..2**31), template a bool.

An entry may carry a 15th element, its options: a map from option name (str) to
value.  Options this version does not know are ignored, so later options need no
new format.  Only a connection with options has the 15th element; every other
entry is the 14 elements above, byte for byte.  Known options:

    "seq"   [init_seq, delta, previous_delta, sent, version]: the sequence shift of
            a connection whose director inserts a PROXY header (IPVS's
            IPVS_OPT_SEQ_DATA: init_seq, delta, previous_delta, all 0..2**32-1),
            whether the header has gone out (bool), and the PROXY version it is
            written in (1 or 2), so the peer can write the same header again for a
            retransmitted first segment.  delta == previous_delta: the node writes
            no header (the client's own was passed through).
    "refused"  true: the client opened with a PROXY header of its own and the service
            refuses that; the connection forwards no client packet (only with "seq").
    "toa"   int 0..2**32-1: the real server's first sequence number (its SYN-ACK's + 1)
            of a TOA connection whose option may still have to be sent: the segments
            that acknowledge it can still complete the server's handshake, so a node
            that takes over writes the option on them (docs/client-address.md).

A node older than options refuses an entry of 15 elements (its whole message is
counted malformed); see docs/client-address.md.

`decode` raises SyncError and nothing else, whatever bytes it is given.  It
does the cheap checks first and parses nothing it has not authenticated:
length (oversize beyond `max_len`; malformed if too short), the first bytes of
the header read in place (an array of 9, the version: bad_version, the sync id:
wrong_sync_id; anything else malformed), the MAC (bad_mac), and only then the
msgpack decoding and every field (malformed).  The sync id is read before the
MAC so that another pair's traffic on a shared group is reported as such, not
as an attack; nothing from an unauthenticated message is used beyond that
classification, and unauthenticated bytes never reach the msgpack decoder (a
large crafted datagram would otherwise cost milliseconds of the event loop).

Size: one wire format kept together: its constants, the field table above, the encoder
and the decoder with its checks, so both directions read against one spec.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import msgpack

from proto.consts import SYNC_FLAGS

__all__ = [
    "VERSION", "DATA", "HEARTBEAT", "NACK", "RESYNC_REQUEST", "CHALLENGE", "RESPONSE", "OVERRIDES",
    "STATE",
    "TYPES", "pack_overrides",
    "NONCE_LEN",
    "F_BULK", "F_BULK_START", "F_BULK_END", "MAC_LEN", "MAX_PAYLOAD", "MAX_DATAGRAM", "REASONS",
    "SyncError", "SyncEntry", "Message", "encode", "decode",
    "pack_entry", "encode_data", "data_budget", "pack_entries", "nack_ranges_per_message",
]

VERSION = 1
DATA, HEARTBEAT, NACK, RESYNC_REQUEST, CHALLENGE, RESPONSE, OVERRIDES, STATE = 1, 2, 3, 4, 5, 6, 7, 8
TYPES = (DATA, HEARTBEAT, NACK, RESYNC_REQUEST, CHALLENGE, RESPONSE, OVERRIDES, STATE)
TYPE_NAMES = {DATA: "DATA", HEARTBEAT: "HEARTBEAT", NACK: "NACK", RESYNC_REQUEST: "RESYNC_REQUEST",
              CHALLENGE: "CHALLENGE", RESPONSE: "RESPONSE", OVERRIDES: "OVERRIDES", STATE: "STATE"}
MAX_ROLE = 16
NONCE_LEN = 16
F_BULK, F_BULK_START, F_BULK_END = 0x01, 0x02, 0x04
_ALL_FLAGS = F_BULK | F_BULK_START | F_BULK_END

MAC_LEN = 32
MAX_PAYLOAD = 1472          # 1500 - IPv4 - UDP, as IPVS's default sync_maxlen
MAX_DATAGRAM = 65507      # the largest UDP payload over IPv4
MAX_NODE_ID = 64
U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
#: the entry option that carries a PROXY connection's sequence shift (see above)
OPT_SEQ = "seq"
#: beside "seq": the connection was refused for the client's own PROXY header
OPT_REFUSED = "refused"
#: a TOA connection's real server's first sequence number, while the option may be due
OPT_TOA = "toa"
MAX_TIMEOUT = float(1 << 31)
_ENTRY_FLAGS = SYNC_FLAGS

MALFORMED, BAD_MAC, WRONG_SYNC_ID, BAD_VERSION = "malformed", "bad_mac", "wrong_sync_id", "bad_version"
OVERSIZE = "oversize"
REASONS = (MALFORMED, BAD_MAC, WRONG_SYNC_ID, BAD_VERSION, OVERSIZE)
_ARRAY9 = 0x99              # msgpack fixarray of 9 elements: every message's first byte
_UINT8 = 0xCC               # msgpack uint8 marker (a sync id of 128..255)


class SyncError(Exception):
    """A datagram that is not a valid message for us; .reason is one of REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class SyncEntry:
    """One connection as carried in a DATA message."""
    proto: int
    state: int
    flags: int
    caddr: bytes
    cport: int
    vaddr: bytes
    vport: int
    laddr: bytes
    lport: int
    daddr: bytes
    dport: int
    timeout: float
    template: bool = False
    in_pkts: int = 0
    #: options "seq" and "refused": (init_seq, delta, previous_delta, sent, version,
    #: refused), or None
    seq: tuple | None = None
    #: option "toa": the real server's first sequence number, or None
    toa: int | None = None

    @classmethod
    def from_conn(cls, conn, now: float, timeout: float) -> "SyncEntry":
        """The entry for a director.conn.Conn.

        `timeout` is the full timeout of the connection's state (Engine.timeout_of).
        What is sent is the time the connection has left, capped at that: on the
        packet path (the engine refreshes the timer before calling its sync hook)
        the two are equal, as IPVS sends cp->timeout; in a bulk resync an idle
        connection is not given a fresh full timeout on the peer.
        """
        t = time_left(conn, now, timeout)
        adj = conn.client_address_state
        options = None if adj is None else adj.sync_options()
        seq, toa = (None, None) if options is None else _options(options)
        return cls(conn.proto, conn.state, conn.flags & _ENTRY_FLAGS,
                   bytes(conn.caddr), conn.cport, bytes(conn.vaddr), conn.vport,
                   bytes(conn.laddr), conn.lport, bytes(conn.daddr), conn.dport,
                   t, False, conn.in_pkts, seq, toa)

    @classmethod
    def from_template(cls, t, now: float) -> "SyncEntry":
        """The entry for a persistence template (director.persist.Template): the
        client's address, the service and the real server it is pinned to; no
        ports or local address, as IPVS sends templates."""
        svc = t.service
        zero = bytes(len(svc.vip))
        return cls(svc.proto, 0, 0, bytes(t.caddr), 0, bytes(svc.vip), svc.port, zero, 0,
                   bytes(t.dest.addr), t.dest.port, max(t.expires - now, 0.0), True, 0)

    def apply_kwargs(self) -> dict:
        """Keyword arguments for Engine.apply_synced (add `now=`); `seq` and `toa` only
        when the entry carries that option."""
        kw = {"proto": self.proto, "state": self.state, "flags": self.flags,
              "caddr": self.caddr, "cport": self.cport, "vaddr": self.vaddr,
              "vport": self.vport, "laddr": self.laddr, "lport": self.lport,
              "daddr": self.daddr, "dport": self.dport, "timeout": self.timeout,
              "in_pkts": self.in_pkts, "template": self.template}
        if self.seq is not None:
            kw["seq"] = self.seq
        if self.toa is not None:
            kw["toa"] = self.toa
        return kw

    @property
    def key(self) -> tuple:
        """Identifies the connection (its client-side tuple)."""
        return (self.proto, self.caddr, self.cport, self.vaddr, self.vport, self.template)

    def to_wire(self) -> list:
        t = self.timeout
        t = int(t) if t == int(t) else float(t)
        wire = [self.proto, self.state, self.flags, self.caddr, self.cport, self.vaddr,
                self.vport, self.laddr, self.lport, self.daddr, self.dport, t,
                bool(self.template), self.in_pkts]
        options = {} if self.seq is None else seq_options(self.seq)
        if self.toa is not None:
            options.update(toa_options(self.toa))
        if options:
            wire.append(options)
        return wire


def seq_options(seq: tuple) -> dict:
    """The options map of a PROXY connection's shift (the "seq" tuple)."""
    init_seq, delta, previous_delta, sent, version, refused = seq
    options: dict = {OPT_SEQ: [init_seq, delta, previous_delta, bool(sent), version]}
    if refused:
        options[OPT_REFUSED] = True
    return options


def toa_options(first_byte: int) -> dict:
    """The options map of a TOA connection whose option may still be due."""
    return {OPT_TOA: first_byte}


@dataclass(slots=True)
class Message:
    """A decoded (or to-be-encoded) message.  Only the body fields of its type matter."""
    type: int
    sync_id: int
    node_id: str
    epoch: int
    seq: int
    send_time: float
    flags: int = 0
    entries: list = field(default_factory=list)    # DATA: list[SyncEntry]
    last_seq: int = 0                              # HEARTBEAT, RESPONSE
    ranges: list = field(default_factory=list)     # NACK: list[(first, last)]
    target: str | None = None                      # NACK, CHALLENGE, RESPONSE (required),
                                                   # RESYNC_REQUEST (None = all)
    target_epoch: int = 0                          # NACK
    nonce: bytes = b""                             # CHALLENGE, RESPONSE
    wants: bool = False                            # RESPONSE
    overrides: list = field(default_factory=list)  # OVERRIDES: list[list] (Override.to_list)
    role: str = ""                                 # STATE
    priority: int = 0                              # STATE
    address: str = ""                              # STATE
    resigned: bool = False                         # STATE
    version: int = VERSION

    @property
    def bulk(self) -> bool:
        return bool(self.flags & F_BULK)


# -- encoding -------------------------------------------------------------------

def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _check_header(sync_id: int, node_id: str, epoch: int, seq: int) -> None:
    if not 0 <= sync_id <= 255:
        raise ValueError(f"sync_id must be 0..255, got {sync_id}")
    if not isinstance(node_id, str) or not 1 <= len(node_id) <= MAX_NODE_ID:
        raise ValueError(f"node_id must be a string of 1..{MAX_NODE_ID} characters")
    if not 0 <= epoch <= U64 or not 0 <= seq <= U64:
        raise ValueError("epoch and seq must be 0..2**64-1")


#: one packer for every entry: msgpack.packb makes a Packer per call, which cost as much
#: as the packing itself (0.8 against 0.4 us an entry).  Its pack() runs in C without
#: calling back into Python for the types an entry holds, and resets after an error.
_pack = msgpack.Packer(use_bin_type=True).pack


def pack_entry(entry: SyncEntry) -> bytes:
    """The msgpack bytes of one entry, ready to be joined into a DATA body."""
    return _pack(entry.to_wire())


def time_left(conn, now: float, timeout: float) -> float:
    """What an entry says of a connection's time: what it has left, capped at its state's
    full timeout (SyncEntry.from_conn says why)."""
    t = float(timeout)
    if conn.expires > 0:
        t = min(t, max(conn.expires - now, 0.0))
    return t


def pack_conn(conn, now: float, timeout: float) -> bytes:
    """pack_entry(SyncEntry.from_conn(conn, now, timeout)), byte for byte, without the
    entry object in between: the engine's sync hook makes one for most packets of a new
    connection, and the object and its to_wire cost 1.6 us of the 2.9 (tests hold the
    two paths equal)."""
    t = time_left(conn, now, timeout)
    # the addresses as they are: msgpack packs bytes, bytearray and memoryview alike (bin),
    # so the bytes() copies from_conn makes would change nothing on the wire
    wire = [conn.proto, conn.state, conn.flags & _ENTRY_FLAGS, conn.caddr, conn.cport,
            conn.vaddr, conn.vport, conn.laddr, conn.lport, conn.daddr,
            conn.dport, int(t) if t.is_integer() else t, False, conn.in_pkts]
    adj = conn.client_address_state
    if adj is not None:
        options = adj.sync_options()
        if options is not None:
            wire.append(options)
    return _pack(wire)


def _body(msg: Message) -> Any:
    t = msg.type
    if t == DATA:
        return [e.to_wire() for e in msg.entries]
    if t == HEARTBEAT:
        return msg.last_seq
    if t == NACK:
        if msg.target is None:
            raise ValueError("a NACK needs a target node")
        return [msg.target, msg.target_epoch, [[a, b] for a, b in msg.ranges]]
    if t == RESYNC_REQUEST:
        return [] if msg.target is None else [msg.target]
    if t in (CHALLENGE, RESPONSE):
        if msg.target is None or len(msg.nonce) != NONCE_LEN:
            raise ValueError("a CHALLENGE or RESPONSE needs a target node and a 16-byte nonce")
        if t == CHALLENGE:
            return [msg.target, msg.nonce]
        return [msg.target, msg.nonce, msg.last_seq, bool(msg.wants)]
    if t == OVERRIDES:
        return [list(o) for o in msg.overrides]
    if t == STATE:
        return [msg.role, msg.priority, msg.address, bool(msg.resigned)]
    raise ValueError(f"unknown message type {t}")


def encode(msg: Message, key: bytes) -> bytes:
    """Encode and sign one message."""
    _check_header(msg.sync_id, msg.node_id, msg.epoch, msg.seq)
    packed = msgpack.packb([msg.version, msg.sync_id, msg.node_id, msg.epoch, msg.seq,
                            float(msg.send_time), msg.type, msg.flags, _body(msg)],
                           use_bin_type=True)
    return packed + _mac(key, packed)


def encode_data(*, sync_id: int, node_id: str, epoch: int, seq: int, send_time: float,
                flags: int, packed_entries: list[bytes], key: bytes) -> bytes:
    """A DATA message from already packed entries (pack_entry): the sender's fast path."""
    p = msgpack.Packer(use_bin_type=True)
    head = p.pack_array_header(9) + p.pack(VERSION) + p.pack(sync_id) + p.pack(node_id) \
        + p.pack(epoch) + p.pack(seq) + p.pack(float(send_time)) + p.pack(DATA) + p.pack(flags) \
        + p.pack_array_header(len(packed_entries))
    packed = head + b"".join(packed_entries)
    return packed + _mac(key, packed)


def data_budget(node_id: str, max_payload: int = MAX_PAYLOAD) -> int:
    """Bytes of packed entries that always fit in one DATA message of max_payload.

    Worst case for every variable-length header field: sync id 2 bytes, epoch and
    seq 9, send time 9 (float64), flags 1, body array header 3 (<= 65535 entries).
    """
    fixed = 1 + 1 + 2 + len(msgpack.packb(node_id)) + 9 + 9 + 9 + 1 + 1 + 3 + MAC_LEN
    return max_payload - fixed


def nack_ranges_per_message(node_id: str, target: str, max_payload: int = MAX_PAYLOAD) -> int:
    """How many [first, last] ranges always fit in one NACK message."""
    fixed = (1 + 1 + 2 + len(msgpack.packb(node_id)) + 9 + 9 + 9 + 1 + 1
             + 1 + len(msgpack.packb(target)) + 9 + 3 + MAC_LEN)
    return max(1, (max_payload - fixed) // 19)


def pack_overrides(items: Iterable[list], node_id: str,
                   max_payload: int = MAX_PAYLOAD) -> list[list[list]]:
    """Split override entries into bodies that each fit one OVERRIDES message."""
    fixed = 1 + 1 + 2 + len(msgpack.packb(node_id)) + 9 + 9 + 9 + 1 + 1 + 3 + MAC_LEN
    budget = max_payload - fixed
    out: list[list[list]] = []
    cur: list[list] = []
    size = 0
    for item in items:
        n = len(msgpack.packb(item, use_bin_type=True))
        if n > budget:
            raise ValueError("an override does not fit in max_payload")
        if cur and size + n > budget:
            out.append(cur)
            cur, size = [], 0
        cur.append(item)
        size += n
    if cur:
        out.append(cur)
    return out


def pack_entries(header: dict, entries: Iterable[SyncEntry], key: bytes,
                 max_payload: int = MAX_PAYLOAD) -> list[bytes]:
    """Batch entries into DATA datagrams of at most max_payload bytes each.

    `header` holds sync_id, node_id, epoch, send_time, flags (optional) and seq, the
    sequence number of the first datagram; the others follow consecutively.
    """
    node_id = header["node_id"]
    budget = data_budget(node_id, max_payload)
    seq = header["seq"]
    out: list[bytes] = []
    cur: list[bytes] = []
    size = 0

    def close() -> None:
        nonlocal seq, cur, size
        out.append(encode_data(sync_id=header["sync_id"], node_id=node_id, epoch=header["epoch"],
                               seq=seq, send_time=header["send_time"],
                               flags=header.get("flags", 0), packed_entries=cur, key=key))
        seq += 1
        cur, size = [], 0

    for e in entries:
        b = pack_entry(e)
        if len(b) > budget:
            raise ValueError("an entry does not fit in max_payload")
        if size + len(b) > budget:
            close()
        cur.append(b)
        size += len(b)
    if cur:
        close()
    return out


# -- decoding -------------------------------------------------------------------

def _int(v: Any, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise SyncError(MALFORMED)
    return v


def _addr(v: Any) -> bytes:
    if type(v) is not bytes or len(v) not in (4, 16):
        raise SyncError(MALFORMED)
    return v


def _seq_option(v: Any) -> tuple:
    if type(v) is not list or len(v) != 5 or type(v[3]) is not bool:
        raise SyncError(MALFORMED)
    init_seq, delta, previous_delta = (_int(x, 0, U32) for x in v[:3])
    return init_seq, delta, previous_delta, v[3], _int(v[4], 1, 2)


def _options(v: Any) -> tuple[tuple | None, int | None]:
    """An entry's options map: (the seq option, the toa option), each checked or None;
    unknown names ignored."""
    if type(v) is not dict:
        raise SyncError(MALFORMED)
    toa = v.get(OPT_TOA)
    if toa is not None:
        toa = _int(toa, 0, U32)
    seq = v.get(OPT_SEQ)
    if seq is None:
        return None, toa
    refused = v.get(OPT_REFUSED, False)
    if type(refused) is not bool:
        raise SyncError(MALFORMED)
    return _seq_option(seq) + (refused,), toa


def _entry(v: Any) -> SyncEntry:
    if type(v) is not list or len(v) not in (14, 15):
        raise SyncError(MALFORMED)
    (proto, state, flags, caddr, cport, vaddr, vport, laddr, lport, daddr, dport,
     timeout, template, in_pkts) = v[:14]
    seq, toa = _options(v[14]) if len(v) == 15 else (None, None)
    caddr, vaddr, laddr, daddr = _addr(caddr), _addr(vaddr), _addr(laddr), _addr(daddr)
    if not len(caddr) == len(vaddr) == len(laddr) == len(daddr):
        # one family per connection: a service and its real servers share the
        # VIP's family (as IPVS refuses to sync mixed-family destinations)
        raise SyncError(MALFORMED)
    if type(timeout) not in (int, float) or not 0 <= timeout <= MAX_TIMEOUT:
        raise SyncError(MALFORMED)     # (NaN fails the comparison too)
    if type(template) is not bool:
        raise SyncError(MALFORMED)
    flags = _int(flags, 0, 0xFFFFFFFF)
    if flags & ~_ENTRY_FLAGS:
        raise SyncError(MALFORMED)
    return SyncEntry(_int(proto, 0, 255), _int(state, 0, 255), flags,
                     caddr, _int(cport, 0, 65535), vaddr, _int(vport, 0, 65535),
                     laddr, _int(lport, 0, 65535), daddr, _int(dport, 0, 65535),
                     float(timeout), template, _int(in_pkts, 0, U64), seq, toa)


def decode(raw: bytes, key: bytes, sync_id: int | None, max_len: int = MAX_DATAGRAM) -> Message:
    """Check and decode one datagram.  sync_id None accepts every sync id;
    a datagram longer than max_len (the receiver's max_payload) is oversize."""
    try:
        return _decode(raw, key, sync_id, max_len)
    except SyncError:
        raise
    except Exception:               # belt and braces: nothing else may escape
        raise SyncError(MALFORMED) from None


def _peek_sync_id(packed: bytes) -> int:
    """The version and sync id read in place from the first bytes (no decoding):
    every message starts fixarray(9), version (positive fixint), sync id
    (positive fixint, or uint8 for 128..255), as msgpack packs them."""
    b0, version = packed[0], packed[1]
    if not 0x90 <= b0 <= 0x9F or version > 0x7F:
        raise SyncError(MALFORMED)
    if version != VERSION:
        raise SyncError(BAD_VERSION)
    if b0 != _ARRAY9:
        raise SyncError(MALFORMED)
    sid = packed[2]
    if sid == _UINT8:
        sid = packed[3]
        if sid < 0x80:              # not how msgpack packs it: not ours
            raise SyncError(MALFORMED)
    elif sid > 0x7F:
        raise SyncError(MALFORMED)
    return sid


def _decode(raw: bytes, key: bytes, sync_id: int | None, max_len: int) -> Message:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise SyncError(MALFORMED)
    if len(raw) > max_len:
        raise SyncError(OVERSIZE)
    raw = bytes(raw)
    if len(raw) < MAC_LEN + 10:
        raise SyncError(MALFORMED)
    packed, mac = raw[:-MAC_LEN], raw[-MAC_LEN:]
    sid = _peek_sync_id(packed)
    if sync_id is not None and sid != sync_id:
        raise SyncError(WRONG_SYNC_ID)
    if not hmac.compare_digest(mac, _mac(key, packed)):
        raise SyncError(BAD_MAC)
    try:
        obj = msgpack.unpackb(packed, raw=False, use_list=True, strict_map_key=True)
    except Exception:
        raise SyncError(MALFORMED) from None
    if type(obj) is not list or len(obj) != 9 or obj[0] != VERSION or obj[1] != sid:
        raise SyncError(MALFORMED)

    _, sid, node_id, epoch, seq, send_time, mtype, flags, body = obj
    _int(sid, 0, 255)
    if type(node_id) is not str or not 1 <= len(node_id) <= MAX_NODE_ID:
        raise SyncError(MALFORMED)
    _int(epoch, 0, U64)
    _int(seq, 0, U64)
    if type(send_time) is not float or not math.isfinite(send_time):
        raise SyncError(MALFORMED)
    mtype = _int(mtype, 1, STATE)
    flags = _int(flags, 0, _ALL_FLAGS)
    msg = Message(mtype, sid, node_id, epoch, seq, send_time, flags)
    if mtype != DATA and flags:
        raise SyncError(MALFORMED)
    if mtype == DATA:
        if type(body) is not list:
            raise SyncError(MALFORMED)
        msg.entries = [_entry(e) for e in body]
        if flags & (F_BULK_START | F_BULK_END) and not flags & F_BULK:
            raise SyncError(MALFORMED)
    elif mtype == HEARTBEAT:
        msg.last_seq = _int(body, 0, U64)
    elif mtype == NACK:
        if type(body) is not list or len(body) != 3:
            raise SyncError(MALFORMED)
        target, target_epoch, ranges = body
        if type(target) is not str or not 1 <= len(target) <= MAX_NODE_ID:
            raise SyncError(MALFORMED)
        if type(ranges) is not list:
            raise SyncError(MALFORMED)
        out = []
        for r in ranges:
            if type(r) is not list or len(r) != 2:
                raise SyncError(MALFORMED)
            a, b = _int(r[0], 1, U64), _int(r[1], 1, U64)
            if a > b:
                raise SyncError(MALFORMED)
            out.append((a, b))
        msg.target, msg.target_epoch, msg.ranges = target, _int(target_epoch, 0, U64), out
    elif mtype == STATE:
        if type(body) is not list or len(body) != 4:
            raise SyncError(MALFORMED)
        role, priority, address, resigned = body
        if type(role) is not str or not 1 <= len(role) <= MAX_ROLE or type(resigned) is not bool \
                or type(address) is not str or (address and not _is_ip(address)):
            raise SyncError(MALFORMED)
        msg.role, msg.priority, msg.address, msg.resigned = role, _int(priority, 0, 255), address, resigned
    elif mtype == RESYNC_REQUEST:
        if type(body) is not list or len(body) > 1:
            raise SyncError(MALFORMED)
        if body:
            msg.target = _node(body[0])
    elif mtype == OVERRIDES:
        if type(body) is not list:
            raise SyncError(MALFORMED)
        msg.overrides = [_override(o) for o in body]
    else:   # CHALLENGE, RESPONSE
        if type(body) is not list or len(body) != (2 if mtype == CHALLENGE else 4):
            raise SyncError(MALFORMED)
        msg.target = _node(body[0])
        if type(body[1]) is not bytes or len(body[1]) != NONCE_LEN:
            raise SyncError(MALFORMED)
        msg.nonce = body[1]
        if mtype == RESPONSE:
            msg.last_seq = _int(body[2], 0, U64)
            if type(body[3]) is not bool:
                raise SyncError(MALFORMED)
            msg.wants = body[3]
    return msg


def _override(v: Any) -> list:
    """One override's fields, typed (the director checks what they mean)."""
    if type(v) is not list or len(v) != 8:
        raise SyncError(MALFORMED)
    service, addr, port, gen, by, set_at, weight, drain = v
    if type(service) is not str or not 1 <= len(service) <= 256 or type(addr) is not str \
            or not 1 <= len(addr) <= 64:
        raise SyncError(MALFORMED)
    _int(port, 1, 65535)
    _int(gen, 0, U64)
    _node(by)
    if type(set_at) is not float or not math.isfinite(set_at):
        raise SyncError(MALFORMED)
    if weight is not None:
        _int(weight, 0, U64)          # (its range is the director's to check)
    if type(drain) is not bool:
        raise SyncError(MALFORMED)
    return v
def _is_ip(v: str) -> bool:
    try:
        return len(v) <= 45 and ipaddress.ip_address(v) is not None
    except ValueError:
        return False


def _node(v: Any) -> str:
    if type(v) is not str or not 1 <= len(v) <= MAX_NODE_ID:
        raise SyncError(MALFORMED)
    return v
