"""The sending half of sync, sans-IO: entries in, datagrams out, time injected.

    sender.queue(entry, now)          # from the engine's sync hook (via the policy)
    datagrams = sender.poll(now)      # at sender.next_deadline() or later
    datagrams = sender.on_message(msg, now)   # a NACK or RESYNC_REQUEST from a peer

Entries are packed into DATA messages of at most cfg.max_payload bytes.  A full
message is sealed at once (given the next seq, encoded, signed, stored in the
resend window) and goes out on the next poll; a partly filled one is sealed
cfg.flush_delay after its first entry.  With nothing sent for
cfg.heartbeat_interval, a HEARTBEAT carries the last seq, so a receiver learns
about a lost tail of the stream.  When nothing followed a message that carried an
urgent entry for cfg.tail_probe, the last message is sent again (byte for byte, as
TCP's tail loss probe sends its last segment) and heartbeats follow at doubling
intervals up to the idle one: a new or just-ESTABLISHED connection whose message was
lost right before the master died is made good within milliseconds (by the copy, or
by the NACK a heartbeat brings), not orphaned by a kill before the idle heartbeat.
Every message that carried an urgent entry is also sent once more cfg.urgent_repeat
after it went out, whatever followed it: in a burst later messages reveal a loss at
once, but the repair still needs the NACK and the resend to arrive, and a master
killed tens of milliseconds after the burst may not answer; the copy needs neither.

Reliability is NACK-based (the receiver asks; there are no ACKs): the last
cfg.resend_window datagrams are kept as sent and re-sent byte for byte (same
seq, same MAC) when asked, at most cfg.resend_per_nack for one NACK and
cfg.resend_rate per second (the rest is asked for again; counted resends_capped).  A NACK for a seq that has left the window, or a
RESYNC_REQUEST, starts a bulk resync: the whole table (from `snapshot`) is sent
as ordinary sequenced DATA messages flagged F_BULK (so its own losses are
repaired the same way), paced at cfg.bulk_rate entries/s while normal sync goes
on.  Requests arriving during a bulk are coalesced into one more bulk after it.

`state(role, priority, address, resigned, now)` sets what this node is in the pair
and returns its STATE message to send at once; poll repeats it every STATE_INTERVAL,
so a peer that (re)starts learns it too.  The peer tells a resignation from a stop
by it (both send VRRP priority 0), and shows the role on its /status.

`snapshot()` returns an iterable of SyncEntry, or of any objects together with
`to_entry(obj, now) -> SyncEntry | None`, which is then called as each entry is
sent, so a slow bulk sends each connection's state as it is at that moment (the
node wiring's `engine_source`, tandem/ha.py).
"""
from __future__ import annotations

import secrets
from collections import deque
from typing import Any, Callable

from proto import sync as S
from proto.sync import Message, SyncEntry
from syncd.config import SyncConfig, resolve_key
from syncd.sender_bulk import BulkSend, Snapshot

_MIN_ENTRY = 40     # the smallest packed entry (IPv4, small numbers) is a little over this
#: seconds between repeats of this node's STATE message (sent at once on every change)
STATE_INTERVAL = 1.0


def new_epoch() -> int:
    return secrets.randbits(64)


class _PeerCtl:
    """Replay state for the control messages of one requesting node."""
    __slots__ = ("epoch", "seq")

    def __init__(self, epoch: int, seq: int) -> None:
        self.epoch, self.seq = epoch, seq


class SyncSender(BulkSend):
    def __init__(self, cfg: SyncConfig, node_id: str, epoch: int | None = None,
                 key: bytes | None = None, *, snapshot: Snapshot | None = None,
                 to_entry: Callable[[Any, float], SyncEntry | None] | None = None,
                 wall: Callable[[], float] | None = None) -> None:
        key = resolve_key(cfg, key)
        self.cfg = cfg
        self.node_id = node_id
        self.epoch = new_epoch() if epoch is None else epoch
        self.key = key
        self.snapshot = snapshot
        self.to_entry = to_entry
        self.wall = wall
        self.budget = S.data_budget(node_id, cfg.max_payload)
        self.seq = 0                            # last seq sealed
        n = cfg.resend_window
        self._ring: list[bytes | None] = [None] * n
        self._ring_resent: list[float] = [float("-inf")] * n
        self._ready: deque[bytes] = deque()    # sealed, not yet transmitted
        self._pending: list[bytes] = []         # packed entries of the open message
        self._pending_size = 0
        self._pending_since = 0.0
        self._last_tx: float | None = None
        self._urgent_unsent = False             # an urgent entry queued since the last transmit
        self._tail_at = float("inf")            # the next tail probe or heartbeat (see poll)
        self._tail_step = 0.0
        self._tail_probe = False                # the first tail action re-sends the last seq
        self._urgent_seqs: set[int] = set()     # sealed with an urgent entry, not yet sent
        self._pending_urgent = False            # the open message holds an urgent entry
        self._repeats: deque[tuple[float, int]] = deque()   # (when, seq) to send once more
        self._init_bulk()
        self._ctl: dict[str, _PeerCtl] = {}
        self._resend_tokens = float(cfg.resend_per_nack)
        self._resend_last = 0.0
        self._state: tuple[str, int, str, bool] | None = None   # see state()
        self._state_seq = 0
        self._state_tx = float("-inf")
        self.stats = dict.fromkeys((
            "sent", "entries_sent", "entries_queued", "resends", "resends_held_off",
            "resends_capped", "heartbeats", "tail_probes", "tail_heartbeats", "urgent_repeats",
            "bulk_runs", "bulk_entries",
            "nacks_received", "nacks_past_window",
            "resync_requests", "control_replayed", "queue_drops", "states"), 0)

    # -- helpers ---------------------------------------------------------------------

    def _time(self, now: float) -> float:
        return self.wall() if self.wall is not None else now

    def _seal(self, packed: list[bytes], flags: int, now: float) -> bytes:
        self.seq += 1
        raw = S.encode_data(sync_id=self.cfg.sync_id, node_id=self.node_id, epoch=self.epoch,
                            seq=self.seq, send_time=self._time(now), flags=flags,
                            packed_entries=packed, key=self.key)
        i = self.seq % len(self._ring)
        self._ring[i] = raw
        self._ring_resent[i] = float("-inf")
        self._ready.append(raw)
        if len(self._ready) > self.cfg.max_queue:
            self._ready.popleft()               # still in the window: a NACK repairs it
            self.stats["queue_drops"] += 1
        self.stats["entries_sent"] += len(packed)
        return raw

    def _close_pending(self, now: float) -> None:
        if self._pending:
            self._seal(self._pending, 0, now)
            if self._pending_urgent and self.cfg.urgent_repeat > 0:
                self._urgent_seqs.add(self.seq)
            self._pending_urgent = False
            self._pending = []
            self._pending_size = 0

    # -- the API ---------------------------------------------------------------------

    def queue(self, entry: SyncEntry, now: float, urgent: bool = False) -> None:
        """Add one entry to the open DATA message (sealing it when full).  An urgent
        entry makes the open message due at once: the next poll seals and sends it,
        so entries queued in the same batch of packets still share one datagram."""
        self.queue_packed(S.pack_entry(entry), now, urgent)

    def queue_packed(self, b: bytes, now: float, urgent: bool = False) -> None:
        """queue() for an entry already packed (proto.sync.pack_entry or pack_conn)."""
        self.stats["entries_queued"] += 1
        if self._pending_size + len(b) > self.budget:
            self._close_pending(now)
        if not self._pending:
            self._pending_since = now
        self._pending.append(b)
        self._pending_size += len(b)
        if urgent:
            self._pending_since = float("-inf")
            self._urgent_unsent = True
            self._pending_urgent = True
        if self.budget - self._pending_size < _MIN_ENTRY:
            self._close_pending(now)

    def poll(self, now: float) -> list[bytes]:
        """Datagrams due now: sealed DATA, a due partial message, bulk, heartbeat."""
        if self._pending and now >= self._pending_since + self.cfg.flush_delay:
            self._close_pending(now)
        if self._bulk is not None:
            self._run_bulk(now)
        out = self._transmit(now)
        out += self._due_repeats(now)
        if not out:
            # (an open message will reveal the last seq as well, when it goes)
            tail = now >= self._tail_at and not self._pending
            last = self._ring[self.seq % len(self._ring)] if self._tail_probe and self.seq else None
            if tail and last is not None:
                # the last message again (not held off: a NACK for it must still be answered)
                out.append(last)
                self._forget_repeat(self.seq)
                self._last_tx = now
                self.stats["tail_probes"] += 1
            elif tail or self._last_tx is None or now >= self._last_tx + self.cfg.heartbeat_interval:
                out.append(self.heartbeat(now))
                self.stats["tail_heartbeats"] += tail
            if tail:
                self._tail_probe = False
                self._tail_step *= 2
                self._tail_at = now + self._tail_step \
                    if self._tail_step < self.cfg.heartbeat_interval else float("inf")
        if self._state is not None and now >= self._state_tx + STATE_INTERVAL:
            out.append(self._state_message(now))
        return out

    def state(self, role: str, priority: int, address: str, resigned: bool, now: float) -> bytes:
        """What this node is in the pair, from now on (repeated by poll); its STATE message,
        to send at once."""
        self._state = (role, priority, address, resigned)
        return self._state_message(now)

    def state_again(self, now: float) -> list[bytes]:
        """The STATE message now, if one is set (for a peer whose epoch was just proven:
        one it sent before could not be used)."""
        return [] if self._state is None else [self._state_message(now)]

    def _state_message(self, now: float) -> bytes:
        assert self._state is not None
        role, priority, address, resigned = self._state
        self._state_seq += 1
        self._state_tx = now
        self.stats["states"] += 1
        return S.encode(Message(S.STATE, self.cfg.sync_id, self.node_id, self.epoch,
                                self._state_seq, self._time(now), role=role, priority=priority,
                                address=address, resigned=resigned), self.key)

    def flush(self, now: float) -> list[bytes]:
        """Every pending entry, now: the open message sealed, and all sealed ones not yet sent
        (a planned release hands its last connections to the peer before its addresses go)."""
        self._close_pending(now)
        return self._transmit(now)

    def _transmit(self, now: float) -> list[bytes]:
        """The sealed messages, now.  After one that carried an urgent entry the tail
        probe is armed; a later message (a new last seq) moves it and the tail heartbeats
        to start from it.  A regular heartbeat does not disarm them: it can be lost too."""
        out = list(self._ready)
        self._ready.clear()
        if out:
            if self._urgent_seqs:
                self._plan_repeats(self.seq - len(out) + 1, now)
            self.stats["sent"] += len(out)
            self._last_tx = now
            if self._urgent_unsent and self.cfg.tail_probe > 0:
                self._tail_step = self.cfg.tail_probe
                self._tail_probe = True
            if self._tail_step and (self._urgent_unsent or self._tail_at < float("inf")):
                self._tail_at = now + self._tail_step   # a new last seq: its tail from now
            self._urgent_unsent = False
        return out

    def _plan_repeats(self, first_sent: int, now: float) -> None:
        """The urgent messages just sent (seqs first_sent..self.seq) go once more at
        now + urgent_repeat; those dropped from the queue unsent are left to NACKs."""
        at = now + self.cfg.urgent_repeat
        for seq in sorted(self._urgent_seqs):
            if seq >= first_sent:
                self._repeats.append((at, seq))
        self._urgent_seqs.clear()

    def _due_repeats(self, now: float) -> list[bytes]:
        out: list[bytes] = []
        repeats, ring, window = self._repeats, self._ring, len(self._ring)
        while repeats and repeats[0][0] <= now:
            _, seq = repeats.popleft()
            raw = ring[seq % window]
            if raw is not None and seq > self.seq - window:     # still that seq's message
                out.append(raw)
        if out:
            self.stats["urgent_repeats"] += len(out)
            self._last_tx = now
        return out

    def _forget_repeat(self, seq: int) -> None:
        """The tail probe just sent `seq` again: its planned repeat would be a third copy."""
        if self._repeats and self._repeats[-1][1] == seq:
            self._repeats.pop()

    def heartbeat(self, now: float) -> bytes:
        self.stats["heartbeats"] += 1
        self._last_tx = now
        return S.encode(Message(S.HEARTBEAT, self.cfg.sync_id, self.node_id, self.epoch,
                                self.seq, self._time(now), last_seq=self.seq), self.key)

    def next_deadline(self) -> float:
        """When poll() next has something to do (never infinity: heartbeats)."""
        if self._ready:
            return float("-inf")
        d = float("-inf") if self._last_tx is None else self._last_tx + self.cfg.heartbeat_interval
        if self._pending:
            d = min(d, self._pending_since + self.cfg.flush_delay)
        else:
            d = min(d, self._tail_at)
        if self._bulk is not None:
            d = min(d, self._bulk_last + self.cfg.bulk_interval)
        if self._repeats:
            d = min(d, self._repeats[0][0])
        if self._state is not None:
            d = min(d, self._state_tx + STATE_INTERVAL)
        return d

    def on_message(self, msg: Message, now: float) -> list[bytes]:
        """Handle a peer's NACK or RESYNC_REQUEST; returns datagrams to send now."""
        if msg.node_id == self.node_id or msg.type not in (S.NACK, S.RESYNC_REQUEST):
            return []
        if msg.type == S.NACK and (msg.target != self.node_id or msg.target_epoch != self.epoch):
            return []
        if msg.type == S.RESYNC_REQUEST and msg.target not in (None, self.node_id):
            return []
        if not self._fresh_control(msg):
            self.stats["control_replayed"] += 1
            return []
        if msg.type == S.RESYNC_REQUEST:
            self.stats["resync_requests"] += 1
            self.start_bulk(now)
            return []
        self.stats["nacks_received"] += 1
        return self._answer_nack(msg.ranges, now)

    def _fresh_control(self, msg: Message) -> bool:
        """Control messages carry a per-epoch counter in seq: refuse replays within
        an epoch.  Which epoch of a node is alive is the receiver's business (it
        passes on control messages of authenticated epochs only, syncd.auth); a
        different epoch here is that node's new life."""
        c = self._ctl.get(msg.node_id)
        if c is None or msg.epoch != c.epoch:
            self._ctl[msg.node_id] = _PeerCtl(msg.epoch, msg.seq)
            return True
        if msg.seq <= c.seq:
            return False
        c.seq = msg.seq
        return True

    def _answer_nack(self, ranges, now: float) -> list[bytes]:
        cfg = self.cfg
        n = len(self._ring)
        low = max(1, self.seq - n + 1)          # oldest seq still in the window
        past = False
        spans = []
        for first, last in ranges:
            last = min(last, self.seq)
            if first < low:
                # gone from the window.  A bulk that began after those seqs were
                # sent (running or done) already carries the state they held;
                # anything newer needs another one.
                if min(last, low - 1) > self._bulk_base:
                    past = True
                first = low
            if first <= last:
                spans.append((first, last))
        # Each seq once, however the ranges overlap; at most resend_per_nack
        # datagrams, and no more than the resend budget (resend_rate per second).
        self._resend_tokens = min(self._resend_tokens + (now - self._resend_last) * cfg.resend_rate,
                                  float(cfg.resend_per_nack))
        self._resend_last = now
        cap = min(cfg.resend_per_nack, int(self._resend_tokens))
        out: list[bytes] = []
        hold = cfg.resend_holdoff
        upto = 0
        for first, last in sorted(spans):
            for s in range(max(first, upto + 1), last + 1):
                if len(out) >= cap:
                    self.stats["resends_capped"] += 1
                    break
                i = s % n
                if now - self._ring_resent[i] < hold:
                    self.stats["resends_held_off"] += 1
                    continue
                raw = self._ring[i]
                if raw is not None:
                    self._ring_resent[i] = now
                    out.append(raw)
            else:
                upto = max(upto, last)
                continue
            break
        self._resend_tokens -= len(out)
        self.stats["resends"] += len(out)
        if past:
            self.stats["nacks_past_window"] += 1
            self.start_bulk(now)
        return out
