"""`tandem ipvsadm` in cluster mode: the block of membership, routes announced and flows per
member, from the cluster runner's real /status `cluster` (the source the metrics read),
printed after the whole -L listing and alone by --cluster; a pair-mode node, a single
service and -S stay ipvsadm's layouts."""
from __future__ import annotations

import asyncio
import json

from director import ipvsadm as I
from director.ipvsadm_cluster import MEMBER_TITLE, format_cluster
from tandem.cluster import ADOPT_GRACE, ClusterRunner
from tandem.node import Edges, Node
from tests.fake_kernel import FakeKernel
from tests.helpers import tcp
from tests.unit.test_cluster_node import CLIENT, LADDR, VIP, FakeBird, config, get_status
from tests.unit.test_ipvsadm import serve


def block_rows(text: str) -> dict[str, list[str]]:
    """The member rows of a block, by member name, split on whitespace."""
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.strip() == MEMBER_TITLE)
    return {ln.split()[0]: ln.split() for ln in lines[i + 1:] if ln.strip()}


async def test_the_block_shows_membership_announcements_and_who_serves_each_laddr():
    cfg = config("a", ["a", "b", "c"], None)
    node = Node(cfg, edges=Edges(kernel=FakeKernel()))
    bird, t = FakeBird(), [100.0]
    runner = ClusterRunner(cfg, node.engine, None, clock=lambda: t[0], bird=bird,
                           engine_ok=lambda: True)
    runner.started = t[0]
    node.engine.handle(tcp(CLIENT, VIP, 40000, 80, "S", seq=1), t[0])     # a flow of a's
    await runner.step()
    st = json.loads(json.dumps(runner.status()))          # as the API sends it
    text = format_cluster(st)
    lines = text.splitlines()
    # b and c never heard, but within the start-up grace: counted alive, a announces its own
    assert lines[0] == "Cluster member a: active (healthy; 3 members, 3 alive)"
    assert lines[1] == f"  Announced: {VIP}/32 {LADDR['a']}/32"
    assert "BIRD has" not in text                            # BIRD took what is announced
    assert "  Adopted:   none" in lines and "  Flows:     1 own, 0 of peers" in lines
    assert "  BIRD:      1 announcements, 0 refused; laddrs adopted 0, given back 0" in lines
    rows = block_rows(text)
    assert rows["a"] == ["a", "active", "yes", "-", "1", LADDR["a"]]
    assert rows["b"] == ["b", "-", "yes", "-", "0", LADDR["b"]]
    # none of the block's lines reads as an ipvsadm service or real-server line
    assert not any(ln.startswith(("TCP", "UDP", "FWM", "  ->")) for ln in lines)

    # past the grace, a hears one of three: isolated, withdraws; it names itself as the
    # one that would answer for the silent members' laddrs (rendezvous over who it hears)
    t[0] += ADOPT_GRACE + 0.1
    await runner.step()
    st = json.loads(json.dumps(runner.status()))
    text = format_cluster(st)
    assert text.startswith("Cluster member a: isolated (isolated")
    assert "3 members, 1 alive)" in text.splitlines()[0]
    assert "  Announced: none" in text.splitlines()
    rows = block_rows(text)
    assert rows["b"][:3] == ["b", "-", "no"] and rows["b"][5:] == [LADDR["b"], "(by", "a)"]
    # BIRD refusing: what it still has is shown beside what is announced, and the error
    bird.fail = True
    t[0] += 0.1
    del runner.members["c"]             # one of two: a keeps its own again, BIRD refuses
    await runner.step()
    text = format_cluster(json.loads(json.dumps(runner.status())))
    assert f"  Announced: {VIP}/32 {LADDR['a']}/32" in text.splitlines()
    assert "  BIRD has:  none" in text.splitlines()
    assert "refused" in text and any(ln.startswith("  Last error: ") for ln in text.splitlines())


async def test_ipvsadm_lists_a_cluster_members_table_then_its_block():
    bird = FakeBird()
    node = Node(config("a", ["a", "b", "c"], None), edges=Edges(kernel=FakeKernel(), bird=bird))
    try:
        await node.start()
        host, port = node.api_address
        url = f"http://{host}:{port}"
        node.engine.handle(tcp(CLIENT, VIP, 40000, 80, "S", seq=1), node.clock())

        def main(*argv: str) -> tuple[int, str, str]:
            import contextlib
            import io
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = I.main([*argv, "--api", url])
            return rc, out.getvalue(), err.getvalue()

        rc, out, _ = await asyncio.to_thread(main, "-L", "-n")
        assert rc == 0
        table, _, block = out.partition("\n\n")
        assert table.startswith("IP Virtual Server version") and f"TCP  {VIP}:80 maglev" in table
        assert block.startswith("Cluster member a: ")
        # the block is /status `cluster` of the same node, as the metrics read it
        st = await asyncio.to_thread(get_status, node)
        assert block_rows(block) == block_rows(format_cluster(st["cluster"]))
        assert block_rows(block)["a"][4] == "1"           # the flow a opened
        rc, only, _ = await asyncio.to_thread(main, "--cluster")
        assert rc == 0 and only.startswith("Cluster member a: ") and "IP Virtual Server" not in only
        for argv in (("-L", "-t", f"{VIP}:80"), ("-S",), ("--stats",)):
            rc, out, _ = await asyncio.to_thread(main, *argv)
            assert rc == 0 and "Cluster member" not in out, argv
        rc, _, err = await asyncio.to_thread(main, "--cluster", "--stats")
        assert rc == 2 and "--cluster" in err
    finally:
        await node.stop()


async def test_a_pair_mode_node_has_no_block_and_cluster_says_why(capsys):
    from tests.unit.test_ipvsadm import driven_engine
    runner, url = await serve(driven_engine())
    try:
        rc = await asyncio.to_thread(I.main, ["-L", "--api", url])
        assert rc == 0 and "Cluster member" not in capsys.readouterr().out
        rc = await asyncio.to_thread(I.main, ["--cluster", "--api", url])
        assert rc == 1 and "not a cluster member" in capsys.readouterr().err
    finally:
        await runner.cleanup()


def test_every_word_a_state_says_is_documented():
    """The Said column's legend and docs/cluster.md's sentence on the STATE message name
    every word a director's STATE can say (`joining` was once missing from both)."""
    import re
    from pathlib import Path

    import director.ipvsadm_cluster as block
    from tandem.cluster import SAID
    legend = block.__doc__.split("*Said*", 1)[1].split(")", 1)[0]
    assert set(re.findall(r"`([a-z]+)`", legend)) >= set(SAID), legend
    doc = Path(__file__).parents[2].joinpath("docs", "cluster.md").read_text()
    sentence = doc.split("A cluster director's STATE message says", 1)[1].split(" (section", 1)[0]
    assert set(re.findall(r"`([a-z]+)`", sentence)) == set(SAID), sentence


async def test_the_block_says_which_tracked_links_are_down():
    cfg = config("a", ["a"], None)
    node = Node(cfg, edges=Edges(kernel=FakeKernel()))
    runner = ClusterRunner(cfg, node.engine, None, clock=lambda: 100.0, bird=FakeBird())
    runner.started = 100.0
    await runner.step()
    assert "Links down" not in format_cluster(json.loads(json.dumps(runner.status())))
    runner.links_changed(["back"])
    await runner.step()
    lines = format_cluster(json.loads(json.dumps(runner.status()))).splitlines()
    assert lines[0] == "Cluster member a: down (node unhealthy; 1 members, 1 alive)"
    assert lines[1:3] == ["  Announced: none",
                          "  Links down: back (tracked: nothing announced)"]
    assert block_rows("\n".join(lines))["a"][1] == "fault"
