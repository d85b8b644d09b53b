"""Maglev hashing (ip_vs_mh.c), with the mh-fallback and mh-port flags.

Table: M slots, M a prime from the kernel's list (PRIMES); the default is
4093 (CONFIG_IP_VS_MH_TAB_INDEX = 12, i.e. primes[12 - 8]); option
`table_size` picks another size from the list.

Per dest, in list order:
    offset = hsiphash(port + addr_fold, key1) % M
    skip   = hsiphash(port + addr_fold, key2) % (M - 1) + 1
    turns  = ((last_weight / gcd) >> rshift) or (1 if last_weight else 0)
where gcd is that of all last_weights > 0, rshift = max(0, fls(max/gcd) -
TAB_BITS) with TAB_BITS = CONFIG_IP_VS_MH_TAB_INDEX / 2 (6 for the default
size), which caps the number of turns for huge weights.  `last_weight` is
the dest's latest non-zero weight (kept as in ip_vs_ctl.c: set on add, and on
update when the new weight is not 0), so a quiesced dest keeps its slots and
only its own clients are refused or, with mh-fallback, re-hashed elsewhere;
the other clients do not move.  Dests with last_weight 0 take no turns.

Population: dests take turns in list order; on its turn a dest claims its
next `turns` free slots, each time following perm += skip (mod M) from where
it stopped, until all M slots are owned.  Rebuilt on every `update`.

Lookup: slot = hsiphash(sport + ntohl(saddr_fold), key1) % M, with
sport = 0 unless `mh-port`.  If the slot's dest has weight <= 0 or is
OVERLOAD the connection is refused, unless `mh-fallback`: then it re-hashes
with an offset, (ihash + i) % M for i in 0..M-1, and takes the first
available dest.

Hash.  The kernel uses hsiphash with the fixed keys
{2654435761, 2654435761} and {2654446892, 2654446892} on the u32
`offset + port + ntohl(addr_fold)`.  This module implements hsiphash as
lib/siphash.c does on 64-bit kernels (SipHash-1-3 truncated to 32 bits;
checked against the kernel's test_siphash.c vectors in the unit tests) and
feeds it the same little-endian u32, so the table layout is meant to be the
one a little-endian 64-bit kernel builds.  That has not been checked against a
running kernel, and 32-bit kernels use HalfSipHash1-3 and lay out a different
table.  In any case the table is a pure function of the dest list (addresses,
ports, weights, order), so it is the same on every tandem director with the
same config.
"""
from __future__ import annotations

from math import gcd

from director.sched import Flow, Scheduler, fold_addr, hashed_pick, register
from schema.core import Key

FALLBACK = "mh-fallback"   # IP_VS_SVC_F_SCHED1
PORT = "mh-port"           # IP_VS_SVC_F_SCHED2

PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
DEFAULT_TABLE_SIZE = 4093      # CONFIG_IP_VS_MH_TAB_INDEX = 12

KEY1 = (2654435761, 2654435761)   # generate_hash_secret: hash1
KEY2 = (2654446892, 2654446892)   # hash2

_M64 = (1 << 64) - 1


def hsiphash(data: bytes, key: tuple[int, int]) -> int:
    """hsiphash() of lib/siphash.c for BITS_PER_LONG == 64: SipHash-1-3 with
    a 128-bit key given as two u64 words, result truncated to u32."""
    k0, k1 = key
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1
    n = len(data)
    end = n - (n % 8)

    def rnd(v0, v1, v2, v3):
        v0 = (v0 + v1) & _M64; v1 = ((v1 << 13) | (v1 >> 51)) & _M64; v1 ^= v0
        v0 = ((v0 << 32) | (v0 >> 32)) & _M64
        v2 = (v2 + v3) & _M64; v3 = ((v3 << 16) | (v3 >> 48)) & _M64; v3 ^= v2
        v0 = (v0 + v3) & _M64; v3 = ((v3 << 21) | (v3 >> 43)) & _M64; v3 ^= v0
        v2 = (v2 + v1) & _M64; v1 = ((v1 << 17) | (v1 >> 47)) & _M64; v1 ^= v2
        v2 = ((v2 << 32) | (v2 >> 32)) & _M64
        return v0, v1, v2, v3

    for i in range(0, end, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = rnd(v0, v1, v2, v3)
        v0 ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= b
    v0, v1, v2, v3 = rnd(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = rnd(v0, v1, v2, v3)
    return (v0 ^ v1 ^ v2 ^ v3) & 0xFFFFFFFF


def hsiphash_u32(v: int, key: tuple[int, int]) -> int:
    """hsiphash(&v, 4, key) for a u32 v on a little-endian 64-bit kernel
    (same as hsiphash(v.to_bytes(4, "little"), key), unrolled for speed)."""
    k0, k1 = key
    M = _M64
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1
    b = (4 << 56) | (v & 0xFFFFFFFF)
    v3 ^= b
    for r in range(4):
        if r == 1:
            v0 ^= b
            v2 ^= 0xFF
        v0 = (v0 + v1) & M; v1 = ((v1 << 13) | (v1 >> 51)) & M; v1 ^= v0
        v0 = ((v0 << 32) | (v0 >> 32)) & M
        v2 = (v2 + v3) & M; v3 = ((v3 << 16) | (v3 >> 48)) & M; v3 ^= v2
        v0 = (v0 + v3) & M; v3 = ((v3 << 21) | (v3 >> 43)) & M; v3 ^= v0
        v2 = (v2 + v1) & M; v1 = ((v1 << 17) | (v1 >> 47)) & M; v1 ^= v2
        v2 = ((v2 << 32) | (v2 >> 32)) & M
    return (v0 ^ v1 ^ v2 ^ v3) & 0xFFFFFFFF


def mh_hashkey(addr: bytes, port: int, key: tuple[int, int], offset: int = 0) -> int:
    """ip_vs_mh_hashkey: hsiphash of the u32 offset + port + ntohl(addr_fold)."""
    return hsiphash_u32((offset + port + fold_addr(addr)) & 0xFFFFFFFF, key)


def _dest_key(d) -> tuple:
    return (d.addr, d.port)


@register
class MaglevHashing(Scheduler):
    name = "mh"
    known_flags = frozenset({FALLBACK, PORT})
    option_keys = (Key("table_size", int, DEFAULT_TABLE_SIZE, choices=PRIMES,
                       doc="slots of the lookup table, one of the kernel's primes"),)

    def __init__(self, flags=frozenset(), **kw):
        super().__init__(flags, **kw)
        size = self.options["table_size"]
        if size not in PRIMES:
            raise ValueError(f"mh table_size must be one of {PRIMES}, not {size}")
        self.size = size
        # IP_VS_MH_TAB_BITS = CONFIG_IP_VS_MH_TAB_INDEX / 2
        self.tab_bits = (8 + PRIMES.index(size)) // 2
        self.fallback = FALLBACK in self.flags
        self.use_port = PORT in self.flags
        self.last_weight: dict[tuple, int] = {}
        self.gcd = 0
        self.rshift = 0
        self.turns: list[int] = []      # per dest, in list order
        self.table: list = [None] * size

    # --- table -------------------------------------------------------------

    def update(self, dests):
        dests = list(dests)
        if len(dests) > self.size:
            raise ValueError(f"mh: {len(dests)} dests do not fit a table of {self.size}")
        super().update(dests)
        # last_weight: set on add, then on every update with a non-zero weight.
        lw_old = self.last_weight
        lw = {}
        for d in dests:
            k = _dest_key(d)
            if k not in lw_old or d.weight != 0:
                lw[k] = d.weight
            else:
                lw[k] = lw_old[k]
        self.last_weight = lw
        weights = [max(lw[_dest_key(d)], 0) for d in dests]
        g = 0
        for w in weights:
            if w > 0:
                g = gcd(w, g) if g > 0 else w
        self.gcd = g
        if g < 1:
            self.rshift = 0
            self.turns = [0] * len(dests)
            self.table = [None] * self.size
            return
        shift = (max(weights) // g).bit_length() - self.tab_bits
        self.rshift = shift if shift > 0 else 0
        self.turns = [((w // g) >> self.rshift) or (1 if w else 0) for w in weights]
        self.table = self._populate(dests, self.turns)

    def _populate(self, dests, turns_list) -> list:
        M = self.size
        members = []            # [dest, perm, skip, turns] in list order
        for d, turns in zip(dests, turns_list):
            if turns < 1:
                continue
            offset = mh_hashkey(d.addr, d.port, KEY1) % M
            skip = mh_hashkey(d.addr, d.port, KEY2) % (M - 1) + 1
            members.append([d, offset, skip, turns])
        table = [None] * M
        n = 0
        while True:
            for m in members:
                d, c, skip, turns = m
                for _ in range(turns):
                    while table[c] is not None:
                        c += skip
                        if c >= M:
                            c -= M
                    table[c] = d
                    n += 1
                    if n == M:
                        return table
                m[1] = c

    # --- lookup ------------------------------------------------------------

    def slot(self, flow: Flow, offset: int = 0) -> int:
        port = flow.sport if self.use_port else 0
        return mh_hashkey(flow.src, port, KEY1, offset) % self.size

    def schedule(self, flow: Flow):
        return hashed_pick(self.table, self.slot, flow, self.size, self.fallback, self.dests)