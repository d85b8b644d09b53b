"""director.kernel_flows: the view of kernel-forwarded flows from conntrack events."""
from __future__ import annotations

from director.kernel_flows import Flow, KernelFlows
from director.kernel_rules import MARK_BASE
from proto import ctnetlink as ct

A, B = MARK_BASE | 1, MARK_BASE | 2
V4 = bytes([198, 18, 1, 10]), bytes([198, 18, 0, 100])


def orig(port: int, proto: int = 6) -> ct.Tuple:
    return ct.Tuple(proto, *V4, port, 80)


def event(kind: str, port: int, state: int | None = ct.TCP_CT_SYN_SENT, mark: int | None = A,
          proto: int = 6) -> ct.Message:
    mtype, flags = {"new": (ct.MSG_NEW, ct.NLM_F_CREATE), "update": (ct.MSG_NEW, 0),
                    "destroy": (ct.MSG_DELETE, 0)}[kind]
    tcp = ct.TcpInfo(state) if proto == 6 and state is not None else None
    return ct.Message(mtype, flags, 0, 2, ct.Conntrack(orig=orig(port, proto), mark=mark, tcp=tcp))


def test_lifecycle_counts_active_and_inactive_per_mark():
    v = KernelFlows()
    v.apply(event("new", 1))
    assert v.active_inactive(A) == (0, 1)
    v.apply(event("update", 1, ct.TCP_CT_SYN_RECV))
    v.apply(event("update", 1, ct.TCP_CT_ESTABLISHED))
    assert v.active_inactive(A) == (1, 0)
    v.apply(event("new", 2, mark=B))
    v.apply(event("new", 3, None, proto=17))
    assert v.active_inactive(B) == (0, 1) and v.active_inactive(A) == (1, 1)
    v.apply(event("update", 1, ct.TCP_CT_FIN_WAIT))
    assert v.active_inactive(A) == (0, 2)
    v.apply(event("destroy", 1, None))
    v.apply(event("destroy", 3, None, proto=17))
    assert v.active_inactive(A) == (0, 0) and len(v.flows) == 1
    assert v.stats["new"] == 3 and v.stats["destroyed"] == 2


def test_flows_without_our_mark_are_ignored():
    v = KernelFlows()
    v.apply(event("new", 1, mark=None))
    v.apply(event("new", 2, mark=0x12340001))
    assert v.flows == {} and v.stats["ignored"] == 2
    v.apply(event("destroy", 9, None))
    assert v.stats["destroyed"] == 0


def test_overrun_then_resync_repairs_and_counts():
    v = KernelFlows()
    for port in (1, 2, 3):
        v.apply(event("new", port))
    v.overrun()
    assert v.needs_resync and v.stats["overruns"] == 1
    # the kernel's table: 1 gone, 2 now ESTABLISHED, 3 unchanged, 4 never seen, 5 not ours
    table = [ct.Conntrack(orig=orig(2), mark=A, tcp=ct.TcpInfo(ct.TCP_CT_ESTABLISHED)),
             ct.Conntrack(orig=orig(3), mark=A, tcp=ct.TcpInfo(ct.TCP_CT_SYN_SENT)),
             ct.Conntrack(orig=orig(4), mark=B, tcp=ct.TcpInfo(ct.TCP_CT_ESTABLISHED)),
             ct.Conntrack(orig=orig(5), mark=None)]
    assert v.resync(table) == 3
    assert not v.needs_resync and v.stats["repaired"] == 3
    assert v.flows == {orig(2): Flow(A, True, ct.TCP_CT_ESTABLISHED),
                       orig(3): Flow(A, False, ct.TCP_CT_SYN_SENT),
                       orig(4): Flow(B, True, ct.TCP_CT_ESTABLISHED)}
    assert v.active_inactive(A) == (1, 1) and v.active_inactive(B) == (1, 0)
    assert v.resync(table) == 0
