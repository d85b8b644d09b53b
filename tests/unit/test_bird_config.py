"""BIRD 2 configuration text: the announce include (ha/bird.py) and the BGP lab's router
and director configs (lab/bgp.py).  Checked as text, and, where BIRD is installed
(`make setup` installs bird2), parsed by `bird -p` itself."""
from __future__ import annotations

import re
import shutil

import pytest

from ha import bird
from lab import bgp

needs_bird = pytest.mark.skipif(shutil.which("bird") is None, reason="bird2 not installed")


def routes(text: str, proto: str) -> list[str]:
    body = re.search(r"protocol static %s \{(.*?)\n\}" % proto, text, re.S).group(1)
    return re.findall(r"route (\S+) blackhole[ ;]", body)


def test_include_sorts_splits_by_family_and_dedups():
    text = bird.announce_include(["198.19.42.11", "2001:2:40::1/128", "198.19.41.100/32",
                                  "198.19.42.11"])
    assert routes(text, "tandem_announce4") == ["198.19.41.100/32", "198.19.42.11/32"]
    assert routes(text, "tandem_announce6") == ["2001:2:40::1/128"]
    assert text == bird.announce_include(["198.19.41.100", "2001:2:40::1", "198.19.42.11"])


def test_empty_include_keeps_both_protocols_without_routes():
    text = bird.announce_include([])
    assert routes(text, "tandem_announce4") == [] and routes(text, "tandem_announce6") == []


@pytest.mark.parametrize("bad", ["198.19.41.0/24", "2001:2::/64", "not-an-address", "198.19.41.1/33"])
def test_include_refuses_anything_but_one_address(bad):
    with pytest.raises(ValueError):
        bird.announce_include([bad])


def test_reconfigured_reads_birdc_answers():
    assert bird.reconfigured("BIRD 2.0.12 ready.\nReading configuration from x\nReconfigured\n")
    assert bird.reconfigured("Reconfiguration in progress\n")
    assert not bird.reconfigured("BIRD 2.0.12 ready.\n/x:3:1 syntax error, unexpected '}'\n")
    assert not bird.reconfigured("Unable to connect to server control socket (/x): "
                                 "No such file or directory\n")
    assert bird.reconfigure_argv("/run/x.ctl") == ["birdc", "-s", "/run/x.ctl", "configure"]


def test_director_rows_and_addresses():
    rows = bgp.director_rows(3)
    assert [(r["name"], r["addr"], r["laddr"]) for r in rows] == [
        ("a", "198.19.40.11", "198.19.42.11"), ("b", "198.19.40.12", "198.19.42.12"),
        ("c", "198.19.40.13", "198.19.42.13")]
    for bad in (0, bgp.MAX_DIRECTORS + 1):
        with pytest.raises(ValueError):
            bgp.director_rows(bad)


def test_router_config_has_a_session_per_director_and_merges_paths():
    rows = bgp.director_rows(4)
    text = bgp.router_config(rows)
    assert re.findall(r"neighbor (\S+) as 65001;", text) == [r["addr"] for r in rows]
    assert "merge paths on" in text
    assert "export all" in text                          # kernel protocol installs routes
    assert text.count("bfd on;") == 4 and "protocol bfd" in text
    plain = bgp.router_config(rows, bgp.Timers(bfd=False))
    assert "bfd" not in plain


def test_director_config_announces_the_include_only_and_has_no_kernel_protocol(tmp_path):
    row = bgp.director_rows(1)[0]
    text = bgp.director_config(row, str(tmp_path / "announce.conf"))
    assert f'include "{tmp_path / "announce.conf"}";' in text
    assert bird.export_filter(4) in text and "import none" in text
    assert "protocol kernel" not in text
    assert "neighbor 198.19.40.1 as 65000;" in text and "local 198.19.40.11 as 65001;" in text


@needs_bird
@pytest.mark.parametrize("bfd", [True, False])
def test_bird_parses_every_generated_config(tmp_path, bfd):
    timers = bgp.Timers(bfd=bfd)
    rows = bgp.director_rows(3)
    (tmp_path / "router.conf").write_text(bgp.router_config(rows, timers))
    bgp.check_config(tmp_path / "router.conf")
    include = tmp_path / "announce.conf"
    (tmp_path / "a.conf").write_text(bgp.director_config(rows[0], str(include), timers))
    for prefixes in ([], ["198.19.41.100", "198.19.42.11"], ["198.19.41.100", "2001:2:40::1"]):
        include.write_text(bird.announce_include(prefixes))
        bgp.check_config(tmp_path / "a.conf")


def test_ipv6_adds_an_ipv6_session_per_director_and_an_ipv6_kernel_protocol(tmp_path):
    """`--ipv6` (lab/bgp6.py): the router has a second, IPv6 session per director between
    their IPv6 addresses on the segment, prefers the global next hop, and merges equal IPv6
    routes; a director exports the include's IPv6 protocol there.  Without it, nothing of
    IPv6 (the IPv4 lab's configs stay as they were)."""
    rows = bgp.director_rows(3)
    text = bgp.router_config(rows, ipv6=True)
    assert text.startswith(bgp.router_config(rows))
    assert re.findall(r"neighbor (\S+) as 65001;", text) == [r["addr"] for r in rows] + [
        "2001:2:0:40::11", "2001:2:0:40::12", "2001:2:0:40::13"]
    six = text[text.index("protocol kernel kernel6"):]
    assert "ipv6 { import none; export all; };" in six and "merge paths on" in six
    assert six.count("next hop prefer global;") == 3 and six.count("bfd on;") == 3
    d = bgp.director_config(rows[1], str(tmp_path / "a"), ipv6=True)
    assert "local 2001:2:0:40::12 as 65001;" in d and "neighbor 2001:2:0:40::1 as 65000;" in d
    assert bird.export_filter(6) in d
    assert "ipv6" not in bgp.router_config(rows) + bgp.director_config(rows[1], "/x")


@needs_bird
@pytest.mark.parametrize("bfd", [True, False])
def test_bird_parses_the_ipv6_configs(tmp_path, bfd):
    timers = bgp.Timers(bfd=bfd)
    rows = bgp.director_rows(8)
    (tmp_path / "router.conf").write_text(bgp.router_config(rows, timers, ipv6=True))
    bgp.check_config(tmp_path / "router.conf")
    include = tmp_path / "announce.conf"
    include.write_text(bird.announce_include(["198.19.41.100", "2001:2:0:41::100",
                                              "2001:2:0:42::18"]))
    (tmp_path / "h.conf").write_text(bgp.director_config(rows[7], str(include), timers, True))
    bgp.check_config(tmp_path / "h.conf")


@needs_bird
def test_bird_refuses_a_broken_config(tmp_path):
    """The check is real: a config BIRD cannot parse raises, with BIRD's message."""
    (tmp_path / "bad.conf").write_text(bgp.router_config(bgp.director_rows(1)).replace(";", "", 1))
    with pytest.raises(RuntimeError, match="bad.conf"):
        bgp.check_config(tmp_path / "bad.conf")


def test_adapter_writes_the_include_once_per_change(tmp_path):
    from ha.bird_io import BirdAnnouncer
    ann = BirdAnnouncer(tmp_path / "announce.conf", tmp_path / "bird.ctl")
    assert ann.write(["198.19.41.100"]) is True
    assert ann.write(["198.19.41.100/32"]) is False       # same set, same bytes
    assert routes((tmp_path / "announce.conf").read_text(), "tandem_announce4") == \
        ["198.19.41.100/32"]
    assert ann.write([]) is True
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(shutil.which("birdc") is None, reason="bird2 not installed")
def test_adapter_says_when_no_bird_listens(tmp_path):
    from ha.bird_io import BirdAnnouncer, BirdError
    with pytest.raises(BirdError, match="bird.ctl"):
        BirdAnnouncer(tmp_path / "announce.conf", tmp_path / "bird.ctl").apply(["198.19.41.100"])
    # the file is written all the same: BIRD reads it when it starts
    assert "198.19.41.100/32" in (tmp_path / "announce.conf").read_text()


def test_a_bgp_session_is_established_only_when_birdc_says_so():
    """`birdc show protocols` (BIRD 2): a cluster director says its routes are up only
    once a BGP session is up and Established (tandem/cluster.py)."""
    from ha.bird import bgp_established
    head = ("BIRD 2.0.12 ready.\n"
            "Name       Proto      Table      State  Since         Info\n"
            "device1    Device     ---        up     15:36:47.470  \n"
            "tandem_announce4 Static master4 up     15:36:47.470  \n")
    assert bgp_established(head + "uplink     BGP        ---        up     15:36:48.617  Established   \n")
    for row in ("uplink     BGP        ---        start  15:36:48.617  Active        Socket: Connection refused\n",
                "uplink     BGP        ---        start  15:36:48.617  Connect       \n",
                "uplink     BGP        ---        down   15:36:48.617  \n"):
        assert not bgp_established(head + row)
    assert not bgp_established("Unable to connect to server control socket (/run/bird/bird.ctl): No such file\n")


def test_the_include_is_readable_by_birds_user_whatever_the_nodes_umask(tmp_path):
    """BIRD reads the include as its own user; the role's unit runs the node with umask
    0077, which made the rewritten file the node's alone (mode 0600)."""
    import os
    import stat

    from ha.bird_io import BirdAnnouncer
    ann = BirdAnnouncer(tmp_path / "announce.conf", tmp_path / "bird.ctl")
    old = os.umask(0o077)
    try:
        assert ann.write(["198.19.41.100/32"])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "announce.conf").stat().st_mode) == 0o644


def test_own_routes_carry_the_own_community_and_adopted_ones_do_not():
    """The router's view tells a peer's own route from an adopter's by OWN_COMMUNITY."""
    text = bird.announce_include(["198.19.41.100", "198.19.42.11", "198.19.42.12"],
                                 adopted=["198.19.42.12/32"])
    tag = "{ bgp_large_community.add((64512, 1, 1)); };"
    assert f"route 198.19.41.100/32 blackhole {tag}" in text
    assert f"route 198.19.42.11/32 blackhole {tag}" in text
    assert "route 198.19.42.12/32 blackhole;" in text
    assert routes(text, "tandem_announce4") == ["198.19.41.100/32", "198.19.42.11/32",
                                                "198.19.42.12/32"]


HEAD = "BIRD 2.0.12 ready.\n"
VIEW = (HEAD + "Table import:\n"
        "198.19.42.11/32      unicast [uplink 18:08:13.951 from 198.19.40.1] * (100) [AS65001i]\n"
        "\tvia 198.19.40.11 on eth0\n"
        "198.19.42.13/32      unicast [uplink 18:08:13.233 from 198.19.40.1] * (100) [AS65001i]\n"
        "\tvia 198.19.40.13 on eth0\n"
        "                     unicast [uplink 18:08:14.001 from 198.19.40.1] (100) [AS65001i]\n"
        "\tvia 198.19.40.14 on eth0\n")


@pytest.mark.parametrize("output, listed", [
    (VIEW, {"198.19.42.11/32", "198.19.42.13/32"}),
    (HEAD + "Table import:\n", set()),                     # a view: nobody routed
    (HEAD + "No import table in channel uplink.ipv4\n", None),
    (HEAD + "Channel uplink.ipv6 not found\n", None),
    ("Unable to connect to server control socket (/x): No such file or directory\n", None),
])
def test_routes_listed_reads_a_view_and_tells_an_error_from_an_empty_one(output, listed):
    got = bird.routes_listed(output)
    assert got == (None if listed is None else frozenset(listed))


def test_established_sessions_and_the_view_query():
    out = (HEAD + "Name       Proto      Table      State  Since         Info\n"
           "device1    Device     ---        up     18:11:06.980  \n"
           "uplink     BGP        ---        up     18:11:07.980  Established   \n"
           "uplink2    BGP        ---        start  18:11:06.980  Active        \n"
           "tor2       BGP        ---        up     18:11:08.100  Established   \n")
    assert bird.established_sessions(out) == ["uplink", "tor2"]
    assert bird.bgp_established(out) and not bird.bgp_established(out.replace("Established", "Idle"))
    assert bird.owned_routes_argv("/x.ctl", "uplink") == [
        "birdc", "-s", "/x.ctl", "show", "route", "import", "table", "uplink.ipv4", "where",
        "bgp_large_community", "~", "[(64512, 1, 1)]"]


def test_router_sends_each_director_the_others_routes_every_path_and_directors_keep_them_aside():
    rows = bgp.director_rows(3)
    text = bgp.router_config(rows)
    assert text.count("add paths tx;") == 3
    for r in rows:
        assert f'export where proto ~ "dir_*" && proto != "dir_{r["name"]}";' in text
    d = bgp.director_config(rows[0], "/x")
    assert "allow local as;" in d
    assert "ipv4 { add paths rx; import table on; import none; " in d


@needs_bird
def test_bird_parses_an_include_with_adopted_routes(tmp_path):
    include = tmp_path / "announce.conf"
    (tmp_path / "a.conf").write_text(bgp.director_config(bgp.director_rows(1)[0], str(include)))
    include.write_text(bird.announce_include(["198.19.41.100", "198.19.42.11", "198.19.42.12",
                                              "2001:2:40::1"], adopted=["198.19.42.12"]))
    bgp.check_config(tmp_path / "a.conf")
