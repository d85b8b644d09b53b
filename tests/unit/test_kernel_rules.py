"""director.kernel_rules: the generated nftables and iptables-nft text, the mark allocator
and the reading of the kernel's queue counters (the lab test loads the same text)."""
from __future__ import annotations

import pytest

from director import kernel_rules as k
from director import rules

V4 = k.KernelService("198.18.0.100", "tcp", 80, ("198.18.2.100", "198.18.2.101"))
V6 = k.KernelService("2001:2::100", "udp", 53, ("2001:2:1::100",))


def _marks() -> k.Marks:
    m = k.Marks()
    m.mark_for("198.18.2.21", 8080, "198.18.2.100")
    m.mark_for("2001:2:1::21", 5353, "2001:2:1::100")
    return m


def _block(text: str, head: str) -> list[str]:
    """The lines of the block that starts with `head` (a set, map or chain)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == head + " {")
    end = next(i for i in range(start, len(lines)) if lines[i].strip() == "}")
    return [line.strip() for line in lines[start + 1:end]]


def test_table_is_replaced_in_one_transaction():
    text = k.ruleset([V4], [])
    assert text.splitlines()[:3] == ["table inet tandem {}", "delete table inet tandem",
                                    "table inet tandem {"]
    assert text.count("table inet tandem {\n") == 1


def test_sets_and_maps_of_both_families():
    text = k.ruleset([V4, V6], _marks().bindings())
    assert _block(text, "set svc4")[1] == "elements = { 198.18.0.100 . tcp . 80 }"
    assert _block(text, "set svc6")[1] == "elements = { 2001:2::100 . udp . 53 }"
    assert _block(text, "set laddr4")[1] == "elements = { 198.18.2.100, 198.18.2.101 }"
    assert _block(text, "map dnat4") == ["type mark : ipv4_addr . inet_service",
                                         "elements = { 0x54440001 : 198.18.2.21 . 8080 }"]
    assert _block(text, "map snat6")[1] == "elements = { 0x54440002 : 2001:2:1::100 }"


def test_empty_family_has_no_elements_line():
    text = k.ruleset([V4], [])
    assert _block(text, "set svc6") == ["type ipv6_addr . inet_proto . inet_service"]
    assert _block(text, "map dnat4") == ["type mark : ipv4_addr . inet_service"]


def test_chains():
    text = k.ruleset([V4, V6], _marks().bindings())
    new_flow = _block(text, "chain new_flow")
    assert new_flow[0] == "type filter hook prerouting priority -120; policy accept;"
    assert new_flow[5] == ("ct state new ip daddr . meta l4proto . th dport @svc4 "
                           "meta mark & 0xffff0000 == 0x54440000 ct mark set meta mark")
    assert _block(text, "chain to_real")[1:] == [
        "meta l4proto { tcp, udp } ip daddr . meta l4proto . th dport @svc4 dnat ip to ct mark map @dnat4",
        "meta l4proto { tcp, udp } ip6 daddr . meta l4proto . th dport @svc6 dnat ip6 to ct mark map @dnat6"]
    assert _block(text, "chain to_laddr")[0].endswith("hook postrouting priority srcnat; policy accept;")
    assert "ct original ip daddr @vip4 snat ip to ct mark map @snat4" in _block(text, "chain to_laddr")
    guard = _block(text, "chain guard")
    assert guard[0] == "type filter hook input priority filter; policy accept;"
    assert 'ip daddr . meta l4proto . th dport @svc4 counter name "untranslated" drop' in guard
    assert 'ip6 daddr @laddr6 meta l4proto { tcp, udp } counter name "untranslated" drop' in guard


def test_queue_rule_is_one_mark_match_and_the_table_marks_first_packets():
    """The xt rule (nftables has no queue statement here) is minimal: what carries
    QUEUE_MARK; the table decides what that is (new, unconfirmed flows to a service)."""
    assert rules.queue_rules(3).splitlines() == [
        "*mangle", ":TANDEM_QUEUE - [0:0]", "-F TANDEM_QUEUE",
        "-A TANDEM_QUEUE -m mark --mark 0x54450000 -j NFQUEUE --queue-num 3", "COMMIT"]
    queue_new = _block(k.ruleset([V4, V6], []), "chain queue_new")
    assert queue_new == [
        "type filter hook prerouting priority -160; policy accept;",
        "ct state new ct status ! confirmed ip daddr . meta l4proto . th dport @svc4 meta mark set 0x54450000",
        "ct state new ct status ! confirmed ip6 daddr . meta l4proto . th dport @svc6 meta mark set 0x54450000"]
    assert k.QUEUE_MARK & k.MARK_PREFIX_MASK != k.MARK_BASE     # never a binding's mark


def test_one_table_for_both_modes():
    text = k.ruleset([V4], [], engine=["198.18.0.50", "198.18.2.50", "2001:2::50"])
    assert text.count("table inet tandem {\n") == 1
    assert _block(text, "set engine4")[1] == "elements = { 198.18.0.50, 198.18.2.50 }"
    assert _block(text, "set engine6")[1] == "elements = { 2001:2::50 }"
    assert _block(text, "chain untracked") == [
        "type filter hook prerouting priority -300; policy accept;",
        "ip daddr @engine4 notrack meta mark set 0x54450000",
        "ip6 daddr @engine6 notrack meta mark set 0x54450000"]
    assert _block(text, "chain unmark")[1] == "meta mark 0x54450000 meta mark set 0x00000000"
    assert len(_block(text, "chain defrag")) == 2 and "chain guard {" in text


def test_engine_only_table_has_no_conntrack_expression():
    """Without kernel-mode services the table must not turn conntrack on in the namespace:
    no ct expression at all (notrack needs none)."""
    text = k.ruleset([], [], engine=["198.18.0.50"])
    assert " ct " not in text and "queue_new" not in text and "guard" not in text
    assert rules.engine_update(["198.18.0.50", "2001:2::50"]).splitlines() == [
        "flush set inet tandem engine4", "add element inet tandem engine4 { 198.18.0.50 }",
        "flush set inet tandem engine6", "add element inet tandem engine6 { 2001:2::50 }"]

def test_marks_are_stable_and_never_reused():
    m = k.Marks()
    a = m.mark_for("198.18.2.21", 8080, "198.18.2.100")
    b = m.mark_for("198.18.2.22", 8080, "198.18.2.100")
    assert a == k.MARK_BASE | 1 and b == k.MARK_BASE | 2
    assert m.mark_for("198.18.2.21", 8080, "198.18.2.100") == a
    assert m.mark_for("2001:2:1:0::21", 8080, "2001:2:1::100") == m.mark_for("2001:2:1::21", 8080,
                                                                                 "2001:2:1::100")
    assert [x.mark for x in m.bindings()] == [a, b, k.MARK_BASE | 3]
    assert all(x & k.MARK_PREFIX_MASK == k.MARK_BASE for x in (a, b))


def test_queue_counters():
    text = "    7  12345     0 2 65531     3     4       42  1\n    9  1 5 2 65531 0 0 7 1\n"
    assert k.queue_counters(text) == {
        7: {"waiting": 0, "dropped": 3, "user_dropped": 4, "queued": 42},
        9: {"waiting": 5, "dropped": 0, "user_dropped": 0, "queued": 7}}


def test_unknown_protocol_is_refused():
    bad = k.KernelService("198.18.0.100", "sctp", 80, ("198.18.2.100",))
    with pytest.raises(k.KernelRulesError, match="198.18.0.100:80: protocol 'sctp'"):
        k.ruleset([bad], [])
    with pytest.raises(k.KernelRulesError):
        k.update([bad], [])


def test_timeout_policies_from_the_timeouts_section():
    from schema import keys as K
    timeouts = {**K.TIMEOUTS.defaults(), "tcp_established": 899.5, "tcp_close": 0.2}
    text = k.ruleset([V4, V6], [], timeouts)
    tcp4 = _block(text, "ct timeout tcp4")
    assert tcp4[:2] == ["protocol tcp", "l3proto ip"]
    policy = dict(p.split(" : ") for p in tcp4[2].removeprefix("policy = { ").removesuffix(" }").split(", "))
    # conntrack's SYN_SENT is the client's unanswered SYN: IPVS's SYN_RECV at the director
    assert policy == {"syn_sent": "60", "syn_recv": "120", "established": "900", "fin_wait": "120",
                      "close_wait": "60", "last_ack": "30", "time_wait": "120", "close": "1",
                      "syn_sent2": "120"}
    assert _block(text, "ct timeout udp6") == ["protocol udp", "l3proto ip6",
                                               "policy = { unreplied : 300, replied : 300 }"]
    assert ('ct state new ip6 daddr . meta l4proto . th dport @svc6 meta l4proto udp '
            'ct timeout set "udp6"') in _block(text, "chain new_flow")
    assert "ct timeout" not in k.ruleset([V4], [])


def test_invalid_and_untranslated_drops_count_into_named_counters():
    """Malformed packets in kernel mode: conntrack's INVALID to a service or laddr is
    dropped in new_flow (before NAT) into `invalid`; the guard's drops into `untranslated`."""
    text = k.ruleset([V4, V6], _marks().bindings())
    assert _block(text, "counter invalid") == [] and _block(text, "counter untranslated") == []
    new_flow = _block(text, "chain new_flow")
    assert new_flow[1:5] == [
        f'ct state invalid {ip} daddr @{s}{f} meta l4proto {{ tcp, udp }} counter name "invalid" drop'
        for f, ip in ((4, "ip"), (6, "ip6")) for s in ("vip", "laddr")]
    guard = _block(text, "chain guard")[1:]
    assert len(guard) == 4 and all(r.endswith('counter name "untranslated" drop') for r in guard)


def test_counters_are_read_from_nft_json():
    text = ('{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "inet", '
            '"name": "invalid", "table": "tandem", "handle": 5, "packets": 120, "bytes": 7000}}, '
            '{"counter": {"family": "inet", "name": "untranslated", "table": "tandem", '
            '"handle": 6, "packets": 3, "bytes": 180}}, {"counter": {"family": "inet", '
            '"name": "invalid", "table": "other", "packets": 9}}]}')
    assert k.parse_counters(text) == {"invalid": 120, "untranslated": 3}
    assert k.parse_counters('{"nftables": []}') == {"invalid": 0, "untranslated": 0}


def test_a_timeouts_change_adds_a_generation_and_switches_new_flows_in_one_script():
    """nft keeps an object's policy when the same name is added with another one
    (measured), so a reload adds new objects and points new_flow at them; the old ones stay
    for the flows already using them."""
    from schema import keys as K
    timeouts = {**K.TIMEOUTS.defaults(), "tcp_established": 60}
    lines = k.update([V4, V6], _marks().bindings(), timeouts, 3).splitlines()
    adds = [line for line in lines if line.startswith("add ct timeout")]
    assert [a.split()[5] for a in adds] == ["tcp4_3", "tcp6_3", "udp4_3", "udp6_3"]
    assert "established : 60" in adds[0] and "l3proto ip6;" in adds[1]
    flush = lines.index("flush chain inet tandem new_flow")
    rules = [line.removeprefix("add rule inet tandem new_flow ") for line in lines[flush + 1:]
             if line.startswith("add rule inet tandem new_flow ")]
    loaded = _block(k.ruleset([V4, V6], [], timeouts, 3), "chain new_flow")[1:]
    assert rules == loaded and 'ct timeout set "tcp4_3"' in rules[-4]
    assert flush > max(lines.index(a) for a in adds)
    # without a change the chains and objects are left alone
    assert not any("timeout" in line or "chain" in line
                   for line in k.update([V4], _marks().bindings()).splitlines())
    assert k.timeout_name("udp", 6) == "udp6"


@pytest.mark.parametrize("engine_addrs", [[], ["198.18.0.200"]])
def test_a_kernel_mode_start_never_loads_a_table_without_its_nat_chains(monkeypatch, engine_addrs):
    """A node restarted after a kill finds its predecessor's table and flows.  Its start
    loads the engine-mode part, then the kernel-mode part.  If the first load replaced the
    table with the engine part alone, the namespace would for a moment have no nat chain,
    hence no NAT hooks (nftables registers them per namespace while a nat chain exists):
    the held flows' packets would reach the host's stack untranslated, and it answers
    them with RST (the lab saw 10 of 10 held flows reset).  Every load that replaces the
    table on such a start has the nat chains, and the last one has both modes' parts."""
    from tandem.kernel import LinuxKernel
    loads: list[str] = []
    monkeypatch.setattr(k, "load", loads.append)
    monkeypatch.setattr(k, "table_contents", lambda: None)
    monkeypatch.setattr(rules, "install_queue", lambda queue: None)
    node = LinuxKernel()
    node.install_rules(engine_addrs, 5, kernel_follows=True)
    b = k.Binding(k.MARK_BASE | 1, "198.18.3.10", 8080, "198.18.2.100")
    node.install_kernel_rules([V4], [b], 5, None, fresh=True)
    replacing = [s for s in loads if f"delete table inet {k.TABLE}" in s]
    assert replacing and all("type nat hook prerouting" in s for s in replacing), loads
    assert all(a in loads[-1] for a in engine_addrs) and "queue_new" in loads[-1]
    # without a kernel-mode part to follow, the first load replaces the table at once
    loads.clear()
    LinuxKernel().install_rules(engine_addrs, 5)
    assert len(loads) == 1 and f"delete table inet {k.TABLE}" in loads[0]


def test_a_binding_has_one_mark_whether_its_addresses_come_packed_or_as_text():
    """The engine hands packed addresses (no parsing per new flow); the reload and adoption
    paths text: both name the same binding, and a mark adopted first is the one given."""
    import ipaddress
    m = k.Marks()
    assert m.adopt(k.MARK_BASE | 9, "198.18.2.21", 8080, "198.18.2.100")
    packed = (ipaddress.ip_address("198.18.2.21").packed, 8080, ipaddress.ip_address("198.18.2.100").packed)
    assert m.mark_for(*packed) == k.MARK_BASE | 9 == m.mark_for(*packed)
    six = (ipaddress.ip_address("2001:2:1::21").packed, 53, ipaddress.ip_address("2001:2:1::100").packed)
    assert m.mark_for(*six) == m.mark_for("2001:2:1:0::21", 53, "2001:2:1::100") != k.MARK_BASE | 9
    assert len(m.bindings()) == 2


def test_a_fresh_load_over_a_predecessors_table_keeps_its_timeout_objects():
    """Deleting a `ct timeout` object takes its policy off every flow that uses it (the
    kernel's untimeout walk): a restarted node that replaced the table whole left the
    flows it adopts on conntrack's own timeouts (the lab measured 432000 s established
    after their next packet).  A fresh load over a table holding timeout objects deletes
    everything else by name in the one transaction and keeps them; its own objects are a
    later generation."""
    from schema import keys as K
    listing = ('{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", '
               '"name": "tandem", "handle": 2}}, {"counter": {"family": "inet", "name": "invalid", '
               '"table": "tandem", "packets": 0}}, {"ct timeout": {"family": "inet", "name": "tcp4", '
               '"table": "tandem", "protocol": "tcp", "l3proto": "ip", "policy": {"established": 900}}}, '
               '{"ct timeout": {"family": "inet", "name": "udp6_2", "table": "tandem"}}, '
               '{"set": {"family": "inet", "name": "svc4", "table": "tandem"}}, '
               '{"map": {"family": "inet", "name": "dnat4", "table": "tandem"}}, '
               '{"chain": {"family": "inet", "table": "tandem", "name": "new_flow", "hook": "prerouting"}}, '
               '{"rule": {"family": "inet", "table": "tandem", "chain": "new_flow", "expr": []}}]}')
    have = k.parse_table(listing)
    assert have.timeouts == ("tcp4", "udp6_2")
    assert have.others == (("counter", "invalid"), ("set", "svc4"), ("map", "dnat4"), ("chain", "new_flow"))
    assert [k.timeout_generation(n) for n in ("tcp4", "udp6_2", "tcp4_13", "mine")] == [1, 2, 13, None]
    timeouts = K.TIMEOUTS.defaults()
    lines = k.ruleset([V4], _marks().bindings(), timeouts, 3, keep=have).splitlines()
    assert f"delete table inet {k.TABLE}" not in lines
    assert lines[:6] == [f"table inet {k.TABLE} {{}}", f"flush table inet {k.TABLE}",
                         "delete counter inet tandem invalid", "delete set inet tandem svc4",
                         "delete map inet tandem dnat4", "delete chain inet tandem new_flow"]
    assert not any(line.startswith("delete ct timeout") for line in lines)
    assert "\tct timeout tcp4_3 {" in lines and "\tct timeout tcp4 {" not in lines
    with pytest.raises(k.KernelRulesError, match="tcp4"):       # the caller's generation is new
        k.ruleset([V4], [], timeouts, 1, keep=have)
    # no timeout objects to keep: the table is replaced whole, as before
    assert lines[:2] != k.ruleset([V4], [], timeouts, 1, keep=k.TableContents()).splitlines()[:2]
    assert k.delete_timeouts(["udp6_2", "tcp4"]) == ("delete ct timeout inet tandem tcp4\n"
                                                     "delete ct timeout inet tandem udp6_2\n")
