"""Maglev hashing with Katran-style (MaglevHashV2) smooth weights.

Not an IPVS scheduler: the Maglev paper's table (65537 slots by default, as
in the paper, Katran and Envoy) filled with Katran's V2 weighting, for
services where the mh scheduler's 4093-slot table is too coarse.

Build (once per `update`):
  - dests with weight <= 0 are left out;
  - per dest: offset = H1(addr, port) % M, skip = H2(addr, port) % (M-1) + 1,
    its preference list being offset, offset+skip, ... (mod M, M prime, so
    it visits every slot);
  - rounds: in each round every dest, in canonical order (below), adds its weight to an
    accumulator; when the accumulator reaches the max weight it subtracts the
    max weight and takes a turn: it claims its next free preferred slot.
    Rounds repeat until all M slots are owned.  So a dest's share of slots is
    its weight / total weight, and a dest takes at most one turn per round.
    Dest i takes its k-th turn in round ceil(k * maxw / w_i); the turn
    sequence is generated from that formula and sorted, instead of looping
    over rounds.
Lookup: slot = H3(client address, client port) % M; O(1).

H1, H2, H3 are BLAKE2b (digest 8 bytes, little-endian) with fixed keys (never
Python's hash(), which is salted per process), and the members are taken in
one canonical order (address, then port) whatever order the list came in, so
the table is a pure function of the *set* of dests and their weights: not of
their order in the file, nor of the updates that led there (each update
rebuilds from scratch).  So any number of directors with the same real servers
build the same table and send a flow to the same dest without sharing state,
which a cluster of active directors behind ECMP relies on (docs/cluster.md).
Katran uses MurmurHash3 instead, so the layout is not Katran's.

If the slot's dest is OVERLOAD or has since been quiesced (weight 0 without
an update) the connection is refused, unless the `maglev-fallback` flag is
set: then the table is walked forward from the slot to the first usable
dest.  Slots of the table are spread evenly over dests by share, so the walk
spreads the refused dest's clients over the others by weight, and it is
deterministic.

Option: `table_size` (a prime, >= the number of dests; declared in `option_keys`, set per
service as `scheduler_options`).
"""
from __future__ import annotations

import hashlib

from director.sched import Flow, Scheduler, register, usable
from schema.core import Key

FALLBACK = "maglev-fallback"
DEFAULT_TABLE_SIZE = 65537

_KEY_OFFSET = b"tandem/maglev/offset/v1"
_KEY_SKIP = b"tandem/maglev/skip/v1"
_KEY_LOOKUP = b"tandem/maglev/lookup/v1"


def _h(data: bytes, key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=key).digest(), "little")


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _dest_bytes(d) -> bytes:
    return bytes(d.addr) + d.port.to_bytes(2, "big")


def canonical_key(d) -> tuple:
    """The order members take turns in: by address (IPv4 before IPv6), then port."""
    return len(d.addr), bytes(d.addr), d.port


def permutation(d, size: int) -> tuple[int, int]:
    """(offset, skip) of a dest's preference list in a table of `size`."""
    data = _dest_bytes(d)
    return _h(data, _KEY_OFFSET) % size, _h(data, _KEY_SKIP) % (size - 1) + 1


def turn_order(weights: list[int], count: int) -> list[int]:
    """The first `count` turns of Katran's V2 rounds, as member indices.

    In round r (from 1) member i takes a turn iff floor(r*w/maxw) grew, i.e.
    in rounds ceil(k*maxw/w) for k = 1, 2, ...; within a round, list order."""
    n = len(weights)
    maxw = max(weights)
    total = sum(weights)
    # Enough rounds that sum(floor(R*w/maxw)) >= count.
    rounds = ((count + n) * maxw) // total + 1
    keys: list[int] = []
    for i, w in enumerate(weights):
        k_max = rounds * w // maxw
        keys.extend([((k * maxw + w - 1) // w) * n + i for k in range(1, k_max + 1)])
    keys.sort()
    del keys[count:]
    return [k % n for k in keys]


@register
class Maglev(Scheduler):
    name = "maglev"
    known_flags = frozenset({FALLBACK})
    option_keys = (Key("table_size", int, DEFAULT_TABLE_SIZE, lo=2,
                       doc="slots of the lookup table: a prime, at least the number of real "
                           "servers (more slots, more even shares)"),)

    def __init__(self, flags=frozenset(), **kw):
        super().__init__(flags, **kw)
        size = self.options["table_size"]
        if not _is_prime(size):
            raise ValueError(f"maglev table_size must be a prime, not {size}")
        self.size = size
        self.fallback = FALLBACK in self.flags
        self.table: list = [None] * size
        #: what the table was built from: (dest, weight) per member, in canonical order
        self.built_from: tuple | None = None

    def update(self, dests):
        dests = list(dests)
        members = sorted((d for d in dests if d.weight > 0), key=canonical_key)
        if len(members) > self.size:
            raise ValueError(f"maglev: {len(members)} dests do not fit a table of {self.size}")
        super().update(dests)
        # the table is a function of the members and their weights alone: an update that
        # changes neither (a reload that leaves the service as it was) keeps it, where a
        # build of 65537 slots holds the event loop for tens of milliseconds
        built_from = tuple((d, d.weight) for d in members)
        if built_from != self.built_from:
            self.table = self._build(members)
            self.built_from = built_from

    def _build(self, members) -> list:
        M = self.size
        if not members:
            return [None] * M
        if len(members) == 1:
            return [members[0]] * M
        perms = [permutation(d, M) for d in members]
        pos = [p[0] for p in perms]
        skips = [p[1] for p in perms]
        owner = [-1] * M
        for i in turn_order([d.weight for d in members], M):
            c = pos[i]
            if owner[c] >= 0:
                s = skips[i]
                c += s
                if c >= M:
                    c -= M
                while owner[c] >= 0:
                    c += s
                    if c >= M:
                        c -= M
            owner[c] = i
            pos[i] = c
        return [members[i] for i in owner]

    def slot(self, flow: Flow) -> int:
        return _h(bytes(flow.src) + flow.sport.to_bytes(2, "big"), _KEY_LOOKUP) % self.size

    def schedule(self, flow: Flow):
        table = self.table
        s = self.slot(flow)
        d = table[s]
        if d is None:
            return None
        if usable(d):
            return d
        if not self.fallback or not any(usable(x) for x in self.dests):
            return None
        M = self.size
        for step in range(1, M):
            d = table[(s + step) % M]
            if usable(d):
                return d
        return None
