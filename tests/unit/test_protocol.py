"""The per-protocol operations table (director.protocol), as ip_vs_proto.c registers it."""
from __future__ import annotations

import pytest

from director.protocol import Protocol, make_protocols, register, registered
from director.tcp_state import DEFAULT_TIMEOUTS
from proto.consts import ESTABLISHED, STATE_NAMES, SYN_RECV, TCP, UDP
from syncd.policy import TCP_SYNC_STATES


def test_tcp_and_udp_are_registered_under_their_numbers():
    assert set(registered()) >= {TCP, UDP}
    for number, cls in registered().items():
        assert cls.number == number and cls.state_names == STATE_NAMES[number]


def test_every_protocol_table_is_complete():
    """Each direction x flags byte x state has a next state of that protocol;
    every state has a timeout from the config's defaults."""
    for p in make_protocols(DEFAULT_TIMEOUTS).values():
        n = len(p.state_names)
        assert len(p.timeouts) == n
        assert len(p.next) == 3
        for row in p.next:
            assert len(row) == 256
            assert all(len(cells) == n and all(0 <= s < n for s in cells) for cells in row)
        assert len(p.opens) == len(p.new_conn) == 256


def test_a_protocol_number_cannot_be_registered_twice():
    class Again(Protocol):
        number = TCP
    with pytest.raises(ValueError):
        register(Again)


def test_two_engines_never_share_timeouts():
    a = make_protocols(DEFAULT_TIMEOUTS)
    b = make_protocols({**DEFAULT_TIMEOUTS, "tcp_established": 5})
    assert a[TCP].timeouts[ESTABLISHED] == 900 and b[TCP].timeouts[ESTABLISHED] == 5


def test_tcp_rules_are_the_kernels():
    tcp = make_protocols(DEFAULT_TIMEOUTS)[TCP]
    assert tcp.initial_state(0x02) == SYN_RECV
    assert tcp.opens[0x02] and tcp.opens[0x12] and not tcp.opens[0x10] and not tcp.opens[0x06]
    assert tcp.new_conn[0x02] and not tcp.new_conn[0x12]
    assert tcp.sync_states == TCP_SYNC_STATES
