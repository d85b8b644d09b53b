"""One packed table of the kernel-forwarded flows, shared by the node's two views of them.

A node in kernel mode follows every flow the kernel forwards for it twice over:
director.kernel_flows (mark and TCP state, for the schedulers' counts) and
syncd.kernel_source (what sync sends and refreshes).  At a million flows, Python objects
per flow (a tuple key, a record with floats, a refresh-queue item) cost ~700 bytes; this
table keeps each flow as one dict slot whose key and value are plain ints:

- the key packs the flow's ORIGINAL tuple.  An IPv4 TCP/UDP flow packs into 60 bits
  (client address and port, and a small id naming its (proto, VIP, port) service),
  which CPython keeps in a 32-byte int; anything else (IPv6, ICMP ids, services beyond
  SERVICE_IDS) takes the long form, every field of the tuple.  `key(t)` and `tuple_of(k)`
  go both ways; a given tuple always packs the same way, since service ids are never
  given back.
- the value packs both views' fields (the layout below), under 210 bits: a 52-byte int
  (56 with the allocator's rounding).
  Each view owns a bit (VIEW, SOURCE): a row lives while either holds it, so the end of a
  flow can reach both views in either order.

Real servers and local addresses are interned as small ids (`binding`), as are services.
`members(bit)` is a read-only Mapping of one view's rows (original Tuple -> decoded
record), for the callers and tests that read the views as dicts.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Callable, Iterator

from proto import ctnetlink as ct

#: services (proto, VIP, port) that get a short key's id; beyond, flows take long keys
SERVICE_IDS = 1 << 11
_SVC_MASK = SERVICE_IDS - 1

# -- the value's layout: (shift, width) per field ------------------------------------------
VIEW, SOURCE = 1, 2                     # which view holds the row
VTCP, VTCP_NONE = 2, 0xFF               # the view's TCP conntrack state (8 bits; 0xFF: none)
STATE, OLD_STATE = 10, 14               # the source's IPVS state and old_state (4 bits each)
ASSURED, SEEN_REPLY, SENT = 1 << 18, 1 << 19, 1 << 20   # status bits; the peer may hold it
LPORT = 21                              # the SNAT port (16 bits)
MARK = 37                               # the mark's index (mark & 0xFFFF, 16 bits)
BINDING = 53                            # interned (laddr, real server, port), 24 bits
END = 77                                # sync_endtime in jiffies (48 bits)
DUE = 125                               # refresh due time in µs + 1 (52 bits; 0: none)
VDEADLINE = 177                         # the view's deadline slot + 1 (32 bits; 0: none)
F4, F16, F24, F48, F52 = 0xF, 0xFFFF, 0xFFFFFF, (1 << 48) - 1, (1 << 52) - 1
F32 = (1 << 32) - 1
#: the view's deadline (director.kernel_expiry), a field of the view's own
DEADLINE_BITS = F32 << VDEADLINE
VIEW_FIELDS = VIEW | 0xFF << VTCP | F16 << MARK | DEADLINE_BITS
SOURCE_FIELDS = ~(VIEW_FIELDS)


class FlowTable:
    def __init__(self) -> None:
        #: packed original tuple -> packed fields
        self.rows: dict[int, int] = {}
        #: rows each view holds (VIEW, SOURCE)
        self.held = {VIEW: 0, SOURCE: 0}
        self._svc: dict[tuple[int, bytes, int], int] = {}
        self._svc_of: list[tuple[int, bytes, int]] = []
        self._bind: dict[tuple[bytes, bytes, int], int] = {}
        self._bind_of: list[tuple[bytes, bytes, int] | None] = [None]
        self._last: tuple[Any, int] = (None, 0)

    # -- keys ----------------------------------------------------------------------------

    def key(self, t: ct.Tuple) -> int:
        """The packed key of original tuple `t` (its service gets an id if it has none)."""
        k = self._pack(t, True)
        assert k is not None
        return k

    def find(self, t: ct.Tuple) -> tuple[int, int]:
        """(key, row) of original tuple `t`; row 0 if no view holds it (key -1 if no row
        can have it: its service was never seen)."""
        k = self._pack(t, False)
        return (-1, 0) if k is None else (k, self.rows.get(k, 0))

    def _pack(self, t: ct.Tuple, add: bool) -> int | None:
        last, k = self._last
        if t is last:
            return k
        src = t.src
        if len(src) == 4 and not (t.icmp_id or t.icmp_type or t.icmp_code):
            s = (t.proto, t.dst, t.dport)
            i = self._svc.get(s)
            if i is None and len(self._svc_of) < SERVICE_IDS:
                if not add:
                    return None
                i = self._svc[s] = len(self._svc_of)
                self._svc_of.append(s)
            if i is not None:
                k = ((int.from_bytes(src, "big") << 16 | t.sport) << 11 | i) << 1
                self._last = (t, k)
                return k
        a = int.from_bytes(src + t.dst, "big")
        k = (((((a << 16 | t.sport) << 16 | t.dport) << 16 | t.icmp_id) << 8 | t.icmp_type) << 8
             | t.icmp_code)
        k = ((k << 8 | t.proto) << 1 | (len(src) == 16)) << 1 | 1
        self._last = (t, k)
        return k

    def proto_of(self, k: int) -> int:
        """The protocol of key k, without unpacking the rest."""
        if not k & 1:
            return self._svc_of[k >> 1 & _SVC_MASK][0]
        return k >> 2 & 0xFF

    def tuple_of(self, k: int) -> ct.Tuple:
        if not k & 1:
            k >>= 1
            proto, dst, dport = self._svc_of[k & _SVC_MASK]
            k >>= 11
            return ct.Tuple(proto, (k >> 16).to_bytes(4, "big"), dst, k & F16, dport)
        k >>= 1
        size = 16 if k & 1 else 4
        k >>= 1
        proto, code, itype, iid = k & 0xFF, k >> 8 & 0xFF, k >> 16 & 0xFF, k >> 24 & F16
        dport, sport, a = k >> 40 & F16, k >> 56 & F16, (k >> 72).to_bytes(2 * size, "big")
        return ct.Tuple(proto, a[:size], a[size:], sport, dport, iid, itype, code)

    # -- interned bindings ---------------------------------------------------------------

    def binding(self, laddr: bytes, rs: bytes, rs_port: int) -> int:
        b = (laddr, rs, rs_port)
        i = self._bind.get(b)
        if i is None:
            i = self._bind[b] = len(self._bind_of)
            if i > F24:
                raise OverflowError("more than 2**24 distinct (laddr, real server) bindings")
            self._bind_of.append(b)
        return i

    def binding_of(self, i: int) -> tuple[bytes, bytes, int] | None:
        return self._bind_of[i]

    # -- rows ----------------------------------------------------------------------------

    def put(self, k: int, row: int, bit: int) -> None:
        """Store `row` (which has `bit` set) for key k, counting the view's row if new."""
        old = self.rows.get(k, 0)
        if not old & bit:
            self.held[bit] += 1
        self.rows[k] = row

    def release(self, k: int, row: int, bit: int) -> None:
        """The view `bit` lets go of row k (its current value `row`): the row goes when
        neither view holds it any more."""
        if not row & bit:
            return
        self.held[bit] -= 1
        rest = row & (SOURCE_FIELDS if bit == VIEW else VIEW_FIELDS) & ~bit
        if rest & (VIEW | SOURCE):
            self.rows[k] = rest
        else:
            del self.rows[k]

    def members(self, bit: int, decode: Callable[[int], Any]) -> "Members":
        return Members(self, bit, decode)


class Members(Mapping):
    """One view's rows as a read-only mapping: original Tuple -> decode(row)."""

    def __init__(self, table: FlowTable, bit: int, decode: Callable[[int], Any]) -> None:
        self.table, self.bit, self.decode = table, bit, decode

    def __len__(self) -> int:
        return self.table.held[self.bit]

    def __iter__(self) -> Iterator[ct.Tuple]:
        bit, tuple_of = self.bit, self.table.tuple_of
        return iter([tuple_of(k) for k, r in self.table.rows.items() if r & bit])

    def __getitem__(self, t: ct.Tuple) -> Any:
        r = self.table.find(t)[1] if isinstance(t, ct.Tuple) else 0
        if not r & self.bit:
            raise KeyError(t)
        return self.decode(r)

    def packed(self, limit: int | None = None) -> list[tuple[int, int]]:
        """(key, row) of the members (the first `limit`), cheap to take: the ints the table
        already holds."""
        bit = self.bit
        rows = ((k, r) for k, r in self.table.rows.items() if r & bit)
        return list(rows if limit is None else itertools.islice(rows, limit))

    def unpack(self, item: tuple[int, int]) -> tuple[ct.Tuple, Any]:
        return self.table.tuple_of(item[0]), self.decode(item[1])
