"""ha.vrrp for an IPv6 instance (RFC 5798 §5.1.2, §6.4.3, §7.1): adverts from the link-local
address to ff02::12 with hop limit 255; the tie between equal priorities goes to the higher
link-local address compared as a 128-bit number; what fails the checks is dropped and counted."""
from __future__ import annotations

import pytest

from proto import vrrp as V
from proto.vrrp import Advert
from ha.vrrp import Cause, Reannounce, State, StateChange, VrrpConfig, VrrpInstance

VIPS = ("2001:2:0:51::100",)
GROUP = V.VRRP_GROUP6


def cfg(me: str, **kw) -> VrrpConfig:
    base = dict(vrid=51, priority=100, advert_interval=0.1, addresses=VIPS, primary_address=me)
    base.update(kw)
    return VrrpConfig(**base)


def master(me: str, **kw) -> VrrpInstance:
    i = VrrpInstance(cfg(me, **kw))
    i.start(0.0)
    i.on_timer(i.next_deadline())
    assert i.state is State.MASTER
    return i


def packet(src: str, priority: int = 100, dst: str = GROUP) -> bytes:
    return V.encode(Advert(51, priority, 10, VIPS), src, dst)


@pytest.mark.parametrize("me,peer", [
    ("fe80::2", "fe80::10"),                      # as text "fe80::10" < "fe80::2"
    ("fe80::ffff:ffff:ffff:ffff", "fe80:0:0:1::"),  # differ above the low 64 bits
    ("fe80::9", "fe80::a"),
])
def test_equal_priority_tie_goes_to_the_higher_link_local(me, peer):
    """Master at equal priority: an advert from a higher address makes it Backup; from a lower
    one it re-asserts (advert at once, re-announce) and stays Master."""
    low = master(me)
    out = low.on_packet(packet(peer), peer, GROUP, 255, 1.0)
    assert [(c.new, c.cause) for c in out if isinstance(c, StateChange)] == \
        [(State.BACKUP, Cause.PREEMPTED)]
    assert low.master_address == peer and "higher address" in out[-1].reason
    high = master(peer)
    out = high.on_packet(packet(me), me, GROUP, 255, 1.0)
    assert high.state is State.MASTER and any(isinstance(a, Reannounce) for a in out)
    assert high.counters["reannounced"] == 1


def test_zone_in_the_source_is_ignored():
    """A socket may report the source as fe80::1%eth0: it is still the peer, and our own advert
    looped back with a zone is still ours."""
    i = master("fe80::2")
    i.on_packet(packet("fe80::1"), "fe80::1%eth0", GROUP, 255, 1.0)
    assert i.counters["accepted"] == 1 and i.last_advert[0] == "fe80::1"
    i.on_packet(packet("fe80::2"), "fe80::2%eth0", GROUP, 255, 1.0)
    assert i.counters["drop_own"] == 1


@pytest.mark.parametrize("src,hlim,dst,counter", [
    ("fe80::1", 254, GROUP, "drop_ttl"),
    ("fe80::1", 1, GROUP, "drop_ttl"),
    ("2001:2::1", 255, GROUP, "drop_not_link_local"),     # a global source: off-link or forged
    ("::1", 255, GROUP, "drop_not_link_local"),
    ("fe80::1", 255, "ff02::1", "drop_dst"),
    ("fe80::1", 255, "fe80::2", "drop_dst"),
])
def test_invalid_ipv6_adverts_dropped_and_counted(src, hlim, dst, counter):
    """A higher priority (200) that would preempt if accepted: dropped, counted, no change."""
    for i in (VrrpInstance(cfg("fe80::2")), master("fe80::2")):
        i.start(0.0)
        state, deadline = i.state, i.next_deadline()
        assert i.on_packet(packet(src, 200, dst), src, dst, hlim, 0.05) == []
        assert i.state is state and i.next_deadline() == deadline
        assert i.counters[counter] == 1 and i.counters["accepted"] == 0


def test_valid_ipv6_advert_preempts():
    i = master("fe80::2")
    i.on_packet(packet("fe80::1", 200), "fe80::1", GROUP, 255, 0.5)
    assert i.state is State.BACKUP and i.master_priority == 200


def test_unicast_ipv6_peers_may_be_global():
    """keepalived's unicast mode: the source must be a configured peer, link-local or not."""
    i = master("2001:2::2", unicast_peers=("2001:2::1",))
    i.on_packet(packet("2001:2::1", 200, "2001:2::2"), "2001:2::1", "2001:2::2", 64, 0.5)
    assert i.state is State.BACKUP and i.counters["drop_not_link_local"] == 0


def test_ipv6_primary_address_must_be_link_local_for_multicast():
    with pytest.raises(ValueError, match="link-local"):
        cfg("2001:2::2")
    assert cfg("fe80::2%eth0").primary_address == "fe80::2"


def test_ipv6_only_node_config_needs_a_link_local_primary_address(tmp_path, capsys):
    """tandem check-config on an IPv6-only pair: a global primary_address is refused, naming the
    field; the interface's link-local address is accepted."""
    from tandem.cli import main
    v6 = """\
[node]
name = "a"
api = "[2001:2::11]:9100"

[interfaces]
front = "front"
back = "back"

[vrrp]
vrid = 51
primary_address = "PRIMARY"

[[services]]
proto = "tcp"
vip = "2001:2::100"
port = 80
laddrs = ["2001:2:0:2::100"]
  [[services.real_servers]]
  addr = "2001:2:0:2::21"
  port = 8080
"""
    f = tmp_path / "a.toml"
    for primary, rc in (("2001:2::11", 2), ("fe80::11", 0)):
        f.write_text(v6.replace("PRIMARY", primary))
        f.chmod(0o600)
        assert main(["check-config", str(f)]) == rc, capsys.readouterr()
        err = capsys.readouterr().err
        if rc:
            assert "vrrp.primary_address" in err and "link-local" in err, err
