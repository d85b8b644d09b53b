"""proto.flow_table: the one packed table both kernel-flow views share, checked against plain
dict models of what each view kept before it was packed (a Tuple -> record dict per view)."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from director.kernel_flows import Flow, KernelFlows
from director.kernel_rules import MARK_BASE, MARK_PREFIX_MASK
from proto import consts as C, ctnetlink as ct
from proto.flow_table import SERVICE_IDS, FlowTable
from syncd.kernel_source import KernelSyncSource
from syncd.policy import SyncPolicy

V4 = [bytes([198, 18, 1, i]) for i in (1, 2)]
V6 = [bytes([0x20, 1, 0, 2] + [0] * 11 + [i]) for i in (1, 2)]
VIPS = {4: [bytes([198, 18, 0, 100]), bytes([198, 18, 0, 101])], 16: [bytes([0x20, 1, 0, 2] + [0] * 12)]}
RS, LADDR = bytes([198, 18, 2, 21]), bytes([198, 18, 2, 100])
MARKS = [MARK_BASE | 1, MARK_BASE | 2, 0x12340001, None]

tuples = st.one_of(
    st.builds(lambda src, sport, dst, dport, proto: ct.Tuple(proto, src, dst, sport, dport),
              st.sampled_from(V4), st.integers(0, 3), st.sampled_from(VIPS[4]),
              st.sampled_from([80, 443]), st.sampled_from([6, 17])),
    st.builds(lambda src, sport, proto: ct.Tuple(proto, src, VIPS[16][0], sport, 80),
              st.sampled_from(V6), st.integers(0, 2), st.sampled_from([6, 17])),
    st.builds(lambda src, iid: ct.Tuple(1, src, VIPS[4][0], 0, 0, iid, 8, 0),
              st.sampled_from(V4), st.integers(0, 2)))
events = st.tuples(st.sampled_from(["new", "update", "destroy"]), tuples,
                   st.sampled_from([None, ct.TCP_CT_SYN_SENT, ct.TCP_CT_ESTABLISHED, ct.TCP_CT_FIN_WAIT]),
                   st.sampled_from(MARKS), st.integers(1024, 1030), st.booleans(), st.booleans())


def message(kind, t, state, mark, lport, replied, assured) -> ct.Message:
    mtype, flags = {"new": (ct.MSG_NEW, ct.NLM_F_CREATE), "update": (ct.MSG_NEW, 0),
                    "destroy": (ct.MSG_DELETE, 0)}[kind]
    reply = ct.Tuple(t.proto, RS, LADDR, 8080, lport) if replied or kind != "new" else None
    status = ct.IPS_CONFIRMED | (ct.IPS_SEEN_REPLY | ct.IPS_ASSURED if assured else 0)
    tcp = ct.TcpInfo(state) if t.proto == 6 and state is not None else None
    return ct.Message(mtype, flags, 0, 2, ct.Conntrack(orig=t, reply=reply, status=status,
                                                       mark=mark, tcp=tcp))


def ours(mark) -> bool:
    return mark is not None and mark & MARK_PREFIX_MASK == MARK_BASE


def view_model(model: dict, msg: ct.Message) -> None:
    """What KernelFlows kept per flow before the packed table: Flow(mark, active, state)."""
    c = msg.ct
    if msg.event == "destroy" or not ours(c.mark):
        model.pop(c.orig, None)
        return
    state = c.tcp.state if c.tcp is not None else None
    model[c.orig] = Flow(c.mark, state == ct.TCP_CT_ESTABLISHED, state)


def source_model(model: dict, msg: ct.Message) -> None:
    """What KernelSyncSource kept per flow: its IPVS state and the binding it sends."""
    c = msg.ct
    if msg.event == "destroy" or c.reply is None or c.orig.proto not in (6, 17) or not ours(c.mark):
        model.pop(c.orig, None)
        return
    state = model.get(c.orig, (C.NONE, None))[0]
    if c.orig.proto == 6 and c.tcp is not None and c.tcp.state is not None:
        state = ct.IPVS_STATE_OF_CT[c.tcp.state]
    r = c.reply
    model[c.orig] = (state, (r.dst, r.dport, r.src, r.sport))


def views() -> tuple[KernelFlows, KernelSyncSource]:
    flows = KernelFlows()
    src = KernelSyncSource(SyncPolicy(), lambda proto, state: 100.0, ours, active=True,
                           table=flows.table)
    flows.watch(lambda msg, f: src.apply(msg, 1.0))
    return flows, src


@settings(max_examples=150, deadline=None)
@given(st.lists(tuples, max_size=20))
def test_keys_unpack_to_the_tuple_they_were_packed_from(ts):
    table = FlowTable()
    keys = [table.key(t) for t in ts]
    assert [table.tuple_of(k) for k in keys] == ts
    assert [table.proto_of(k) for k in keys] == [t.proto for t in ts]
    assert all(table.key(t) == k and table.find(t)[0] == k for t, k in zip(ts, keys))
    assert len(set(keys)) == len(set(ts))


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=40), st.lists(st.booleans(), max_size=40))
def test_the_packed_views_agree_with_dict_models(evs, dump_keeps):
    """Random new/update/destroy events (ours or not, with or without a reply, TCP, UDP,
    ICMP, IPv4 and IPv6), then a repair dump of part of the flows: both views hold exactly
    what a plain dict per view would, and the view's counts are the model's."""
    flows, src = views()
    vmodel: dict = {}
    smodel: dict = {}
    for ev in evs:
        msg = message(*ev)
        flows.apply(msg)
        # the view tells the source (its watcher) of every event about one of its flows
        told = msg.ct.orig in vmodel if msg.event == "destroy" else ours(msg.ct.mark)
        view_model(vmodel, msg)
        if told:
            source_model(smodel, msg)
        assert dict(flows.flows.items()) == vmodel and len(flows.flows) == len(vmodel)
        assert {t: (f.state, f.reply) for t, f in src.flows.items()} == smodel
        assert len(src.flows) == len(smodel)
    for mark in MARKS[:2]:
        want = [sum(1 for f in vmodel.values() if f.mark == mark and f.active == a) for a in (True, False)]
        assert list(flows.active_inactive(mark)) == want
    # a dump that shows some of the view's flows, each as the view has it
    dump = [ct.Conntrack(orig=t, reply=ct.Tuple(t.proto, RS, LADDR, 8080, 1024), mark=f.mark,
                         status=ct.IPS_CONFIRMED,
                         tcp=ct.TcpInfo(f.tcp_state) if f.tcp_state is not None else None)
            for (t, f), keep in zip(list(vmodel.items()), dump_keeps + [True] * len(vmodel)) if keep]
    flows.resync(dump)
    src.resync(dump, 2.0)
    kept = {c.orig for c in dump}
    assert dict(flows.flows.items()) == {t: f for t, f in vmodel.items() if t in kept}
    assert set(src.flows) == {t for t in kept if t.proto in (6, 17)}
    assert sum(map(sum, flows.counts.values())) == len(kept)
    for c in dump:
        flows.apply(ct.Message(ct.MSG_DELETE, 0, 0, 2, c))
    assert flows.table.rows == {} and flows.table.held == {1: 0, 2: 0}
    assert sum(map(sum, flows.counts.values())) == 0


def test_services_beyond_the_short_ids_take_long_keys():
    table = FlowTable()
    ts = [ct.Tuple(6, V4[0], (i).to_bytes(4, "big"), 1, 80) for i in range(SERVICE_IDS + 5)]
    keys = [table.key(t) for t in ts]
    assert sum(k & 1 for k in keys) == 5       # the last five: long form
    assert [table.tuple_of(k) for k in keys] == ts and len(set(keys)) == len(ts)
    assert table.find(ct.Tuple(6, V4[0], bytes(4), 2, 443)) == (table.key(ct.Tuple(6, V4[0], bytes(4), 2, 443)), 0)


def test_a_rescheduled_flow_is_refreshed_once_by_its_live_slot():
    """Refreshes are filed by the second they fall due; a state change that reschedules a
    flow leaves its old slot behind, which must neither refresh it early nor twice."""
    flows, src = views()
    t = ct.Tuple(6, V4[0], VIPS[4][0], 1, 80)
    for state, now in ((ct.TCP_CT_SYN_SENT, 0.0), (ct.TCP_CT_ESTABLISHED, 1.0)):
        out = src.apply(message("update", t, state, MARK_BASE | 1, 1024, True, True), now)
        assert out and out[-1][0].state in (C.SYN_RECV, C.ESTABLISHED)
    # timeout 100 s: refreshed every 50 s; a FIN at 30.5 s moves it to 80.5 s
    fin = message("update", t, ct.TCP_CT_FIN_WAIT, MARK_BASE | 1, 1024, True, True)
    assert [e.state for e, _ in src.apply(fin, 30.5)] == [C.FIN_WAIT]
    assert src.next_deadline() == 80.5
    assert src.poll(51.0) == [] and src.poll(80.4) == []
    assert [e.state for e, _ in src.poll(80.5)] == [C.FIN_WAIT]
    assert src.poll(80.9) == [] and src.stats["refreshes"] == 1 and src.next_deadline() == 130.5
