"""The lab's malformed-packet generator draws source ports no client socket gets, so a
malformed packet never lands on an earlier exchange's connection entry (which the director
forwards unchecked, as IPVS does) and is always judged as a new connection's packet."""
from __future__ import annotations

import random

import pytest

from lab.traffic import garbage
from lab.traffic.garbage import quiet_ports


@pytest.mark.parametrize("text, expected", [
    ("32768\t60999\n", range(1024, 32768)),       # the kernel's default: the side below
    ("10000 65000", range(1024, 10000)),           # the lab client's
    ("1024 20000", range(20001, 65536)),           # nothing below: the side above
])
def test_quiet_ports_lie_outside_the_ephemeral_range(text, expected):
    got = quiet_ports(text)
    assert got == expected
    low, high = map(int, text.split())
    assert not any(low <= p <= high for p in (got[0], got[-1]))


def test_every_generated_packet_uses_a_quiet_source_port(monkeypatch):
    monkeypatch.setattr(garbage, "_quiet_ports", lambda: quiet_ports("10000 65000"))
    random.seed(1)
    src, dst = bytes([198, 18, 1, 10]), bytes([198, 18, 0, 100])
    ports = {int.from_bytes(garbage.garbage_packet("bad_tcp_csum", src, dst, 80)[20:22], "big")
             for _ in range(200)}
    assert ports and all(1024 <= p < 10000 for p in ports), sorted(ports)
