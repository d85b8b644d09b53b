"""The conntrack event socket and table dumps: the thin adapter over proto.ctnetlink.

`EventSocket` binds the ctnetlink multicast groups asked for and reads without blocking,
a bounded number of datagrams per call (the same event loop sends VRRP adverts).  When
the kernel could not queue an event for us, recv fails with ENOBUFS: `read()` reports it
(`overrun` True) and the caller repairs its view with `dump()`, as conntrackd does after
a netlink overrun.  The kernel's default `nf_conntrack_events = 2` sends events only for
entries created while a listener exists: bind before the rules that create flows load.
"""
from __future__ import annotations

import ctypes
import errno
import select
import socket
import struct
import time

from director.kernel_flows import MERGED_TCP_STATES
from proto import ctnetlink as ct
from proto.ctevent import decode_event

#: datagrams read per call at most
BATCH = 64


def _netlink() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ct.NETLINK_NETFILTER)


#: SO_RCVBUFFORCE (linux/asm-generic/socket.h): a buffer above net.core.rmem_max, with CAP_NET_ADMIN
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    """The receive buffer asked for.  SO_RCVBUF is capped at net.core.rmem_max (208 KiB by
    default), which a burst of new connections overruns (ENOBUFS) within milliseconds;
    SO_RCVBUFFORCE is not capped and needs CAP_NET_ADMIN, which the node has."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


# -- the kernel-side event filter -------------------------------------------------------------
# classic BPF (linux/filter.h, linux/bpf_common.h)
_LD_H_ABS, _LD_B_IND, _LD_W_ABS, _LD_IMM, _LDX_IMM = 0x28, 0x50, 0x20, 0x00, 0x01
_JEQ_K, _JSET_K, _RET_K, _TAX = 0x15, 0x45, 0x06, 0x07
_SKF_AD_NLATTR, _SKF_AD_NLATTR_NEST = 0xFFFFF000 + 12, 0xFFFFF000 + 16
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
#: the TCP states whose update events the filter drops: the node reads NEW, ESTABLISHED,
#: FIN_WAIT or CLOSE (the end of ESTABLISHED) and the DESTROY; SYN_RECV and the states
#: that follow the first FIN change neither count (all inactive) nor the flow's end
SKIPPED_TCP_STATES = tuple(sorted(MERGED_TCP_STATES))
_ACCEPT = 0xFFFFFFFF


def _be16_of_host(v: int) -> int:
    """What a BPF half-word load (network order) reads of a host-order u16 field."""
    return struct.unpack("!H", struct.pack("=H", v))[0]


def state_filter() -> list[tuple[int, int, int, int]]:
    """A socket filter (cBPF) that drops, in the kernel, the TCP state updates in
    SKIPPED_TCP_STATES: a short connection then costs the node 4 events (NEW, ESTABLISHED,
    FIN_WAIT, DESTROY) instead of 7.  Everything else passes: a new flow's event, a DESTROY,
    an update without TCP protoinfo (UDP's ASSURED, a mark), an update a netlink request
    made (the kernel stamps its event with the requester's port id, 0 for traffic: a
    peer's entry injected over one this node holds, say ESTABLISHED over TIME_WAIT, must
    reach the view, or the node would later sync the flow back as ESTABLISHED), and
    whatever the filter does not recognise.  The kernel's netlink attribute search (SKF_AD_NLATTR, _NEST) finds
    CTA_PROTOINFO > CTA_PROTOINFO_TCP > CTA_PROTOINFO_TCP_STATE, as libnetfilter_conntrack's
    filters do.  Measured in `bench.kpath` (docs/benchmarks.md): without it a short
    connection's ~6 events cost the node about half its CPU per connection."""
    A, D = "accept", "drop"           # jump targets, resolved to offsets below
    prog: list[tuple[int, int | str, int | str, int]] = [
        (_LD_H_ABS, 0, 0, 4),                                   # nlmsg_type
        (_JEQ_K, 0, A, _be16_of_host(ct.MSG_NEW)),              # DESTROY and others pass
        (_LD_H_ABS, 0, 0, 6),                                   # nlmsg_flags
        (_JSET_K, A, 0, _be16_of_host(ct.NLM_F_CREATE)),        # a new flow passes
        (_LD_W_ABS, 0, 0, 12),                                  # nlmsg_pid
        (_JEQ_K, 0, A, 0),                                      # a request's own event passes
        (_LDX_IMM, 0, 0, ct.CTA_PROTOINFO),
        (_LD_IMM, 0, 0, ct._HDR),                               # search after nfgenmsg
        (_LD_W_ABS, 0, 0, _SKF_AD_NLATTR),                      # A: offset or 0
        (_JEQ_K, A, 0, 0),
        (_LDX_IMM, 0, 0, ct.CTA_PROTOINFO_TCP),
        (_LD_W_ABS, 0, 0, _SKF_AD_NLATTR_NEST),
        (_JEQ_K, A, 0, 0),
        (_LDX_IMM, 0, 0, ct.CTA_PROTOINFO_TCP_STATE),
        (_LD_W_ABS, 0, 0, _SKF_AD_NLATTR_NEST),
        (_JEQ_K, A, 0, 0),
        (_TAX, 0, 0, 0),
        (_LD_B_IND, 0, 0, 4),                                   # the state byte
        *((_JEQ_K, D, 0, state) for state in SKIPPED_TCP_STATES),
        (_RET_K, 0, 0, _ACCEPT),
        (_RET_K, 0, 0, 0),
    ]
    at = {A: len(prog) - 2, D: len(prog) - 1}
    return [(code, at[jt] - i - 1 if isinstance(jt, str) else jt,
             at[jf] - i - 1 if isinstance(jf, str) else jf, k)
            for i, (code, jt, jf, k) in enumerate(prog)]


def attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER: the kernel runs `prog` on every datagram before it queues it."""
    insns = b"".join(struct.pack("=HBBI", *i) for i in prog)
    buf = ctypes.create_string_buffer(insns, len(insns))
    fprog = struct.pack("HxxxxxxP" if struct.calcsize("P") == 8 else "HxxP", len(prog),
                        ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class EventSocket:
    def __init__(self, groups: tuple[int, ...] = (ct.GROUP_NEW, ct.GROUP_UPDATE, ct.GROUP_DESTROY),
                 rcvbuf: int = 1 << 22, filtered: bool = True) -> None:
        self.sock = _netlink()
        _set_rcvbuf(self.sock, rcvbuf)
        if filtered:
            attach_filter(self.sock, state_filter())
        mask = 0
        for g in groups:
            mask |= 1 << (g - 1)
        self.sock.bind((0, mask))
        self.sock.setblocking(False)
        self.malformed = 0
        #: the last read() emptied the socket (it ended on EAGAIN).  After an overrun the
        #: kernel drops every event for the socket, silently, until its queue has been read
        #: empty (netlink's "congested" state; only the first drop raises ENOBUFS), so a
        #: repair dump is only complete if it is asked for after that
        self.empty = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, limit: int = BATCH) -> tuple[list[ct.Message], bool]:
        """The events waiting (at most `limit` datagrams) and whether the kernel dropped some."""
        out: list[ct.Message] = []
        self.empty = False
        for _ in range(limit):
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                self.empty = True
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return out, True
                raise
            try:
                out += [m for m in decode_event(data) if isinstance(m, ct.Message)]
            except ct.CtnetlinkError as exc:
                if exc.reason == "overrun":
                    return out, True
                self.malformed += 1
        return out, False

    def close(self) -> None:
        self.sock.close()


NLM_F_DUMP_INTR = 0x10
#: dumps tried when the table changed under one (NLM_F_DUMP_INTR)
DUMP_TRIES = 3


def dump(timeout: float = 5.0, family: int = socket.AF_UNSPEC,
         mark: tuple[int, int] | None = None) -> list[ct.Conntrack]:
    """The kernel's whole conntrack table (this network namespace), on a socket of its own;
    with `mark` (value, mask) only the entries whose mark & mask == value, filtered by the
    kernel.  Blocking: run it in a worker thread.  Raises TimeoutError if the dump does not end.

    A dump the kernel flags as interrupted (the table changed while it was walked) is
    taken again, up to DUMP_TRIES times; the last one is returned as it is."""
    for _ in range(DUMP_TRIES - 1):
        entries, interrupted = _dump_once(timeout, family, mark)
        if not interrupted:
            return entries
    return _dump_once(timeout, family, mark)[0]


def _dump_once(timeout: float, family: int,
               mark: tuple[int, int] | None) -> tuple[list[ct.Conntrack], bool]:
    entries: list[ct.Conntrack] = []
    with DumpReader(family, mark) as reader:
        deadline = time.monotonic() + timeout
        while not reader.done:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([reader], [], [], left)[0]:
                raise TimeoutError(f"conntrack dump not done after {timeout} s")
            entries += reader.read(limit=BATCH)
        return entries, reader.interrupted


class DumpReader:
    """One dump of the table, read without blocking, at most `limit` datagrams per read():
    the node reads it on the loop that sends VRRP adverts, a slice per turn (the kernel
    walks the table as it is read: a datagram of ~32 KiB, about a hundred entries, each).
    `done` once the dump's end was read; `interrupted` if the kernel flagged it
    (NLM_F_DUMP_INTR: the table changed while it was walked)."""

    def __init__(self, family: int = socket.AF_UNSPEC, mark: tuple[int, int] | None = None) -> None:
        self.seq = int(time.monotonic() * 1000) & 0xFFFFFFFF
        self.sock = _netlink()
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            self.sock.bind((0, 0))
            self.sock.send(ct.dump_request(self.seq, family, mark))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        self.done = self.interrupted = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, limit: int = 1) -> list[ct.Conntrack]:
        """The entries of at most `limit` datagrams waiting (none when nothing waits).
        Raises OSError when the kernel refused the dump."""
        entries: list[ct.Conntrack] = []
        for _ in range(limit):
            if self.done:
                break
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                break
            for m in ct.decode(data):
                if isinstance(m, ct.Done) and m.seq == self.seq:
                    self.done = True
                elif isinstance(m, ct.Ack) and m.seq == self.seq and m.errno:
                    raise OSError(m.errno, f"conntrack dump refused: {errno.errorcode.get(m.errno)}")
                elif isinstance(m, ct.Message) and m.seq == self.seq:
                    self.interrupted = self.interrupted or bool(m.flags & NLM_F_DUMP_INTR)
                    entries.append(m.ct)
        return entries

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "DumpReader":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


#: requests in flight at once (each is acknowledged)
DELETE_BATCH = 256


def _requests(tuples: list[ct.Tuple], build, timeout: float) -> tuple[list[int], dict[int, ct.Conntrack]]:
    """Send one request per original tuple (`build(tuple, seq)`), DELETE_BATCH at a time,
    and wait for every acknowledgement: each tuple's errno (0: done) and, by position, the
    entries the kernel answered with."""
    errnos: list[int] = [0] * len(tuples)
    got: dict[int, ct.Conntrack] = {}
    with _netlink() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.bind((0, 0))
        base = int(time.monotonic() * 1000) & 0x7FFFFFFF
        for start in range(0, len(tuples), DELETE_BATCH):
            waiting: dict[int, int] = {}            # seq -> position
            for i, t in enumerate(tuples[start:start + DELETE_BATCH], start):
                seq = (base + i) & 0xFFFFFFFF
                waiting[seq] = i
                sock.send(build(t, seq))
            deadline = time.monotonic() + timeout
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    raise TimeoutError(f"conntrack: {len(waiting)} requests not acknowledged")
                for m in ct.decode(sock.recv(1 << 20)):
                    if isinstance(m, ct.Message) and m.seq in waiting:
                        got[waiting[m.seq]] = m.ct
                    elif isinstance(m, ct.Ack) and m.seq in waiting:
                        errnos[waiting.pop(m.seq)] = m.errno
    return errnos, got


def delete(tuples: list[ct.Tuple], timeout: float = 5.0) -> int:
    """Delete the conntrack entries with these original tuples; return how many the kernel
    deleted.  An entry already gone (ENOENT) is not an error.  Blocking: run it in a worker
    thread.  The kernel sends each one's DESTROY event at once."""
    errnos, _ = _requests(list(tuples), ct.delete_request, timeout)
    for e in errnos:
        if e not in (0, errno.ENOENT):
            raise OSError(e, f"conntrack delete refused: {errno.errorcode.get(e)}")
    return errnos.count(0)


def get(tuples: list[ct.Tuple], timeout: float = 5.0) -> dict[ct.Tuple, ct.Conntrack]:
    """The entries with these original tuples as the kernel holds them now (reply tuple,
    timeout left, status, TCP state); one gone meanwhile (ENOENT) is left out.  Blocking:
    run it in a worker thread."""
    tuples = list(tuples)
    errnos, got = _requests(tuples, ct.get_request, timeout)
    for e in errnos:
        if e not in (0, errno.ENOENT):
            raise OSError(e, f"conntrack get refused: {errno.errorcode.get(e)}")
    return {tuples[i]: c for i, c in got.items()}
