"""director.ct_inject: synced entries of kernel-mode services become ctnetlink requests for
the backup's conntrack table.  Checked with the codec's decoder and, independently, with
pyroute2's nfct parser; and end to end from kernel events on the master (syncd.kernel_source)
through the sync wire format to the requests the backup sends."""
from __future__ import annotations

import errno
import socket

from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from director.ct_inject import Injector
from director.kernel_rules import MARK_BASE, MARK_PREFIX_MASK
from director.protocol import make_protocols
from proto import consts as C, ctnetlink as ct, sync as S
from proto.sync import SyncEntry
from schema import keys as K
from syncd.kernel_source import KernelSyncSource
from syncd.policy import SyncPolicy

CLIENT, VIP = bytes([198, 18, 1, 10]), bytes([198, 18, 0, 100])
RS, RS2, LADDR = bytes([198, 18, 2, 21]), bytes([198, 18, 2, 22]), bytes([198, 18, 2, 100])
BACKUP_MARK = MARK_BASE | 7
LIBERAL = (ct.TCP_FLAG_BE_LIBERAL, ct.TCP_FLAG_BE_LIBERAL)


def entry(cport: int = 40000, state: int = C.ESTABLISHED, timeout: float = 900.0, *,
          proto: int = 6, daddr: bytes = RS, lport: int = 61000) -> SyncEntry:
    return SyncEntry(proto, state, 0, CLIENT, cport, VIP, 80, LADDR, lport, daddr, 8080,
                     timeout, False, 3)


def injector() -> Injector:
    return Injector(lambda e: BACKUP_MARK)


def sent(inj: Injector, limit: int = 256) -> list[ct.Message]:
    out = []
    for raw in inj.requests(limit):
        [m] = ct.decode(raw)
        out.append(m)
    return out


def ack_all(inj: Injector, msgs: list[ct.Message], err: int = 0) -> None:
    for m in msgs:
        inj.on_ack(m.seq, err)


def test_first_entry_creates_the_original_tuple_with_nat():
    """CT_NEW, exclusive: ORIGINAL tuple client -> VIP, reply its plain inverse, DNAT to the
    real server, SNAT to laddr:lport, CONFIRMED, the timeout, BE_LIBERAL both ways, the
    backup's own mark for the binding."""
    inj = injector()
    inj.offer(entry(timeout=899.2))
    [m] = sent(inj)
    assert m.msg_type == ct.MSG_NEW and m.family == socket.AF_INET
    assert m.flags == ct.NLM_F_REQUEST | ct.NLM_F_ACK | ct.NLM_F_CREATE | ct.NLM_F_EXCL
    orig = ct.Tuple(6, CLIENT, VIP, 40000, 80)
    assert m.ct.orig == orig and m.ct.reply == orig.inverse()
    assert m.ct.nat_dst == ct.NatRange(RS, 8080) and m.ct.nat_src == ct.NatRange(LADDR, 61000)
    assert m.ct.status & ct.IPS_CONFIRMED and m.ct.timeout == 900 and m.ct.mark == BACKUP_MARK
    assert m.ct.tcp == ct.TcpInfo(ct.TCP_CT_ESTABLISHED, None, None, LIBERAL, LIBERAL)


def test_pyroute2_reads_the_injection_alike():
    inj = injector()
    inj.offer(entry(state=C.SYN_RECV, timeout=60))
    [raw] = inj.requests()
    m = nfct_msg(raw)
    m.decode()
    tcp = ("CTA_PROTOINFO", "CTA_PROTOINFO_TCP")
    assert m.get_nested(*tcp, "CTA_PROTOINFO_TCP_STATE") == ct.TCP_CT_SYN_RECV
    assert m.get_nested(*tcp, "CTA_PROTOINFO_TCP_FLAGS_ORIGINAL") == LIBERAL
    assert m.get_nested(*tcp, "CTA_PROTOINFO_TCP_FLAGS_REPLY") == LIBERAL
    assert m.get_nested("CTA_NAT_DST", "CTA_NAT_V4_MINIP") == "198.18.2.21"
    assert m.get_nested("CTA_NAT_SRC", "CTA_NAT_PROTO", "CTA_PROTONAT_PORT_MIN") == 61000
    assert m.get_attr("CTA_TIMEOUT") == 60 and m.get_attr("CTA_MARK") == BACKUP_MARK
    assert m.get_attr("CTA_STATUS") & ct.IPS_CONFIRMED


def test_udp_and_ipv6():
    inj = injector()
    v6 = SyncEntry(17, 0, C.INACTIVE, bytes(15) + b"\x0a", 5353, bytes(15) + b"\x64", 53,
                   bytes(15) + b"\x65", 6000, bytes(15) + b"\x15", 5300, 300.0, False, 3)
    inj.offer(v6)
    [m] = sent(inj)
    assert m.family == socket.AF_INET6 and m.ct.tcp is None and m.ct.timeout == 300
    assert m.ct.nat_dst == ct.NatRange(v6.daddr, 5300) and m.ct.nat_src == ct.NatRange(v6.laddr, 6000)


def test_later_entries_update_and_the_end_deletes():
    """Once created: an update (timeout, TCP state, mark; no NAT, no status, which the kernel
    will not change on an existing entry); the end (timeout 0) deletes."""
    inj = injector()
    inj.offer(entry())
    ack_all(inj, sent(inj))
    inj.offer(entry(state=C.FIN_WAIT, timeout=120))
    [m] = sent(inj)
    assert m.flags == ct.NLM_F_REQUEST | ct.NLM_F_ACK
    assert (m.ct.nat_src, m.ct.nat_dst, m.ct.status, m.ct.reply) == (None, None, None, None)
    assert m.ct.timeout == 120 and m.ct.mark == BACKUP_MARK
    assert m.ct.tcp == ct.TcpInfo(ct.TCP_CT_FIN_WAIT, None, None, LIBERAL, LIBERAL)
    ack_all(inj, [m])
    inj.offer(entry(state=C.CLOSE, timeout=0))
    [m] = sent(inj)
    assert m.msg_type == ct.MSG_DELETE and m.ct.orig == ct.Tuple(6, CLIENT, VIP, 40000, 80)
    ack_all(inj, [m])
    assert inj.known == {} and inj.stats["created"] == inj.stats["updated"] == inj.stats["deleted"] == 1


def test_a_new_binding_for_the_same_client_tuple_replaces_the_entry():
    inj = injector()
    inj.offer(entry())
    ack_all(inj, sent(inj))
    inj.offer(entry(state=C.SYN_RECV, daddr=RS2, timeout=60))
    first, second = sent(inj)
    assert first.msg_type == ct.MSG_DELETE
    assert second.msg_type == ct.MSG_NEW and second.ct.nat_dst == ct.NatRange(RS2, 8080)


def test_changes_are_coalesced_and_requests_bounded():
    """Many entries for one connection before the loop runs: one request, the latest state.
    Each call hands out at most `limit` requests; the rest wait, in arrival order."""
    inj = injector()
    for state in (C.SYN_RECV, C.ESTABLISHED, C.FIN_WAIT):
        inj.offer(entry(state=state))
    for port in range(1, 11):
        inj.offer(entry(cport=port))
    assert inj.stats["coalesced"] == 2 and inj.backlog == 11
    first = sent(inj, limit=4)
    assert len(first) == 4 and first[0].ct.tcp.state == ct.TCP_CT_FIN_WAIT
    rest = sent(inj, limit=100)
    assert [m.ct.orig.sport for m in first[1:] + rest] == list(range(1, 11))


def test_an_existing_entry_is_replaced_once_from_sync_and_kept_from_a_bulk():
    """EEXIST on a create: from normal sync the peer wins (delete, create again, once); from
    a bulk resync the entry already there keeps its NAT (a restarted node's own flows) and
    takes the peer's timeout and state, BE_LIBERAL."""
    inj = injector()
    inj.offer(entry())
    ack_all(inj, sent(inj), errno.EEXIST)
    delete, create = sent(inj)
    assert delete.msg_type == ct.MSG_DELETE and create.msg_type == ct.MSG_NEW
    inj.on_ack(delete.seq, 0)
    inj.on_ack(create.seq, errno.EEXIST)      # still there: counted, not retried again
    assert sent(inj) == [] and inj.errors == {"EEXIST": 1} and inj.known == {}
    inj.offer(entry(cport=2), bulk=True)
    ack_all(inj, sent(inj), errno.EEXIST)
    [update] = sent(inj)              # its NAT kept; the peer's timeout, state, BE_LIBERAL
    assert update.msg_type == ct.MSG_NEW and not update.flags & ct.NLM_F_CREATE
    assert update.ct.nat_dst is None and update.ct.tcp.flags_orig == LIBERAL
    ack_all(inj, [update])
    assert inj.stats["kept"] == 1 and inj.known


def test_a_peers_entry_for_a_connection_the_node_holds_as_it_is_updates_it():
    """In a cluster, director a forwards its own connection until the router moves it to b;
    b now sees the client's FIN and tells every peer, a included.  a's kernel holds that
    connection with the very binding the entry carries: the entry updates it (state,
    timeout, BE_LIBERAL; its NAT untouched), never deletes it, which would drop the replies
    arriving meanwhile.  An entry with another binding still wins as before."""
    view = {ct.Tuple(6, CLIENT, VIP, 40000, 80): (RS, 8080, LADDR, 40000),
            ct.Tuple(6, CLIENT, VIP, 40001, 80): (RS2, 8080, LADDR, 40001)}
    inj = Injector(lambda e: BACKUP_MARK, view.get)
    inj.offer(entry(40000, daddr=RS, lport=40000))
    inj.offer(entry(40001, daddr=RS, lport=40001))
    ack_all(inj, sent(inj), errno.EEXIST)
    update, delete, create = sent(inj)
    assert update.ct.orig.sport == 40000 and not update.flags & ct.NLM_F_CREATE
    assert update.ct.nat_dst is None and update.ct.tcp.flags_orig == LIBERAL
    assert delete.msg_type == ct.MSG_DELETE and delete.ct.orig.sport == 40001
    assert create.ct.nat_dst == ct.NatRange(RS, 8080)
    ack_all(inj, [update, delete, create])
    assert (inj.stats["kept"], inj.stats["replaced"], inj.stats["stale"]) == (1, 1, 0)


def test_a_bulk_replaces_an_entry_left_by_an_older_connection_on_the_same_ports():
    """A restarted node's conntrack still holds its entry of an older connection (TIME_WAIT,
    real server RS) when the client reuses that port for a new connection through the peer:
    the kernel's TCP tracker takes a SYN on a TIME_WAIT entry as a new connection, and the
    peer's scheduler gave it real server RS2.  The peer's bulk must not keep the old NAT
    (once this node preempts, RS would answer the connection with a reset: the CI failure
    of test_failover's stop-kernel failback, 63 of 500 reset): the entry is replaced by the
    peer's.  An entry with the peer's binding is still kept (its NAT untouched)."""
    src = KernelSyncSource(SyncPolicy(), lambda p, s: 900.0,
                           lambda m: m & MARK_PREFIX_MASK == MARK_BASE)
    old = [ct.Conntrack(orig=ct.Tuple(6, CLIENT, VIP, port, 80),
                        reply=ct.Tuple(6, RS, LADDR, 8080, port), mark=BACKUP_MARK,
                        status=ct.IPS_CONFIRMED | ct.IPS_SEEN_REPLY | ct.IPS_ASSURED,
                        tcp=ct.TcpInfo(ct.TCP_CT_TIME_WAIT)) for port in (40000, 40001)]
    src.resync(old, 1.0)                # what the node's start-up dump shows (adopted)
    inj = Injector(lambda e: BACKUP_MARK, src.binding)
    inj.offer(entry(40000, daddr=RS2, lport=40000), bulk=True)   # reused: RS2 now
    inj.offer(entry(40001, daddr=RS, lport=40001), bulk=True)    # the same binding
    ack_all(inj, sent(inj), errno.EEXIST)
    delete, create, update = sent(inj)
    assert delete.msg_type == ct.MSG_DELETE and delete.ct.orig.sport == 40000
    assert create.msg_type == ct.MSG_NEW and create.flags & ct.NLM_F_CREATE
    assert create.ct.nat_dst == ct.NatRange(RS2, 8080)
    assert update.ct.orig.sport == 40001 and not update.flags & ct.NLM_F_CREATE
    assert update.ct.nat_dst is None
    ack_all(inj, [delete, create, update])
    assert (inj.stats["stale"], inj.stats["kept"], inj.stats["created"]) == (1, 1, 1)
    assert inj.known[(6, CLIENT, 40000, VIP, 80)] == (RS2, 8080, LADDR, 40000)


def test_an_injected_entry_that_the_node_replaced_itself_is_not_updated_blindly():
    """b injected a's connection on client port 40000 (real server RS).  Later, as master,
    b forwarded a newer connection on the same ports (the kernel replaced the TIME_WAIT
    entry on the new SYN; b's scheduler chose RS2).  When a, master again, sends a third
    connection on those ports to RS, an update would keep RS2's NAT (it carries none):
    the entry is deleted and created with a's binding."""
    view: dict[ct.Tuple, tuple] = {}
    inj = Injector(lambda e: BACKUP_MARK, view.get)
    inj.offer(entry(40000, daddr=RS))
    ack_all(inj, sent(inj))
    assert inj.known
    view[ct.Tuple(6, CLIENT, VIP, 40000, 80)] = (RS2, 8080, LADDR, 61000)   # b's own, newer
    inj.offer(entry(40000, daddr=RS))
    delete, create = sent(inj)
    assert delete.msg_type == ct.MSG_DELETE and create.ct.nat_dst == ct.NatRange(RS, 8080)
    ack_all(inj, [delete, create])
    view[ct.Tuple(6, CLIENT, VIP, 40000, 80)] = (RS, 8080, LADDR, 61000)    # its events read
    inj.offer(entry(40000, daddr=RS, timeout=120.0))
    [update] = sent(inj)
    assert update.msg_type == ct.MSG_NEW and not update.flags & ct.NLM_F_CREATE


def test_an_expired_entry_is_created_again_and_a_missing_one_needs_no_delete():
    inj = injector()
    inj.offer(entry())
    ack_all(inj, sent(inj))
    inj.offer(entry(timeout=800))
    ack_all(inj, sent(inj), errno.ENOENT)
    [again] = sent(inj)
    assert again.msg_type == ct.MSG_NEW and again.ct.nat_dst is not None
    inj.offer(entry(cport=9, timeout=0))
    ack_all(inj, sent(inj), errno.ENOENT)
    assert inj.stats["recreated"] == 1 and inj.stats["gone"] == 1 and inj.stats["failed"] == 0


def test_templates_and_other_protocols_are_not_injected():
    inj = injector()
    t = entry()
    t.template = True
    inj.offer(t)
    inj.offer(entry(proto=132))
    assert inj.requests() == [] and inj.stats["skipped"] == 2


def test_from_master_events_to_backup_requests():
    """End to end without a kernel: the master's events (the reply tuple translated by its
    NAT) go through KernelSyncSource, the signed wire format and the Injector; the backup
    asks its kernel for exactly the master's entry: the same ORIGINAL tuple, DNAT and SNAT
    to the reply tuple's addresses, and the master's later state."""
    protos = make_protocols(K.TIMEOUTS.defaults())
    src = KernelSyncSource(SyncPolicy(), lambda p, s: protos[p].timeouts[s],
                           lambda m: m & MARK_PREFIX_MASK == MARK_BASE, active=True)
    orig = ct.Tuple(6, CLIENT, VIP, 40001, 80)
    reply = ct.Tuple(6, RS, LADDR, 8080, 61234)
    made = []
    for kind, state in (("new", ct.TCP_CT_SYN_SENT), ("update", ct.TCP_CT_ESTABLISHED)):
        msg = ct.Message(ct.MSG_NEW, ct.NLM_F_CREATE if kind == "new" else 0, 0, 2,
                         ct.Conntrack(orig=orig, reply=reply, mark=MARK_BASE | 1,
                                      status=ct.IPS_CONFIRMED | ct.IPS_SEEN_REPLY,
                                      tcp=ct.TcpInfo(state)))
        made += [e for e, _ in src.apply(msg, 1.0)]
    key = b"k" * 32
    [raw] = S.pack_entries({"sync_id": 0, "node_id": "a", "epoch": 1, "send_time": 1.0,
                            "seq": 1}, made, key)
    inj = injector()
    for e in S.decode(raw, key, 0).entries:
        inj.offer(e)
    [m] = sent(inj)                 # coalesced: the ESTABLISHED state won
    assert m.ct.orig == orig
    assert m.ct.nat_dst == ct.NatRange(reply.src, reply.sport)
    assert m.ct.nat_src == ct.NatRange(reply.dst, reply.dport)
    assert m.ct.tcp.state == ct.TCP_CT_ESTABLISHED and m.ct.timeout == 900
