"""The benchmark code itself: report writer, JSON keys, CLI wiring, a tiny
in-process engine run and the C generator on loopback.  No timing assertions."""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess

import pytest

from bench import engine as be
from bench import report, run
from proto import packet as P


def fake_result(**over):
    res = {k: None for k in run.KEYS}
    res.update({
        "date": "2026-01-01T00:00:00+00:00", "command": "tandem bench --json", "quick": False,
        "only": list(run.ORDER), "seconds": 1.0,
        "machine": {"cpu": "Test CPU", "cores": 2, "kernel": "6.1", "python": "3.11.7",
                    "implementation": "CPython", "netfilterqueue": "1.1.0", "mem_mb": 1024,
                    "loadavg_at_start": [0.1, 0.2, 0.3]},
        "activity_at_start": {"lab_prefixes_present": []},
        "results": {},
        "forward_ratio": 0.5, "bytes_per_conn": 350, "takeover_ms_max": 650.0,
    })
    res.update(over)
    res["targets"] = {k: {"value": res.get(k), "target": f"{t[0]} {t[1]:g}" if t else "report",
                          "pass": run.check(res.get(k), t)} for k, t in run.TARGETS.items()}
    return res


def test_check_targets():
    assert run.check(0.9, (">=", 0.8)) is True
    assert run.check(0.7, (">=", 0.8)) is False
    assert run.check(401, ("<=", 400)) is False
    assert run.check(None, ("<=", 400)) is None
    assert run.check(3.0, None) is None


def test_render_has_command_machine_date_and_marks():
    text = report.render(fake_result())
    assert "`tandem bench --json`" in text
    assert "Test CPU" in text and "2026-01-01" in text
    assert "| `forward_ratio` |" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| `forward_ratio`"))
    assert "miss" in line
    line = next(ln for ln in text.splitlines() if ln.startswith("| `bytes_per_conn`"))
    assert "pass" in line
    assert report.HAND_BEGIN in text and report.HAND_END in text
    for name in ("nfq", "engine", "conn_rate", "sync", "takeover"):
        assert f"(`{name}`)" in text


def test_write_keeps_the_hand_written_section(tmp_path):
    path = tmp_path / "benchmarks.md"
    report.write(path, fake_result())
    text = path.read_text()
    assert "Where the time goes" in text          # the placeholder
    mine = "## Where the time goes\n\nParsing is a third of it.\n"
    path.write_text(text.replace(report.hand_written(text), mine.strip("\n")))
    report.write(path, fake_result(date="2026-02-02T00:00:00+00:00"))
    text = path.read_text()
    assert "Parsing is a third of it." in text
    assert "2026-02-02" in text and "2026-01-01" not in text
    assert text.count(report.HAND_BEGIN) == 1


def test_render_sections_with_results_and_errors():
    res = fake_result()
    res["results"] = {
        "engine": {"engine_pps_inprocess": 100, "split": {"us_per_packet": 2.0,
                   "split_us": {"parse": 1.0, "rest": 1.0},
                   "profile_top": [{"function": "f", "calls_per_packet": 1, "tottime_share": 0.5,
                                    "cumtime_share": 1.0}]},
                   "memory": {"object_sizes": {"Conn": 200}, "object_sizes_sum": 200}},
        "nfq": {"error": "RuntimeError: no lab"},
        "takeover": {"advert_100ms": {"drills": 2, "takeover_ms": [300.0, 400.0]},
                     "advert_10ms": {"drills": 2, "takeover_ms": [50.0, 60.0], "errors": ["x"]}},
    }
    text = report.render(res)
    assert "RuntimeError: no lab" in text
    assert "| parse | 1 | 50% |" in text
    assert "300, 400" in text.replace(".0", "")
    assert "not run in this invocation" in text       # conn_rate, sync


def test_collect_keys_and_errors(monkeypatch):
    monkeypatch.setattr("bench.run._activity", lambda: {})
    calls = []

    def ok(quick):
        calls.append(("engine", quick))
        return {"engine_pps_inprocess": 123, "lookup_cost_ratio_1m_vs_1k": 1.1, "bytes_per_conn": 500}

    def boom(quick):
        raise RuntimeError("lab exploded")

    res = run.collect(["engine"], True, "tandem bench --quick", measurements={"engine": ok})
    for key in list(run.KEYS) + ["machine", "date", "command", "targets", "results"]:
        assert key in res
    assert res["engine_pps_inprocess"] == 123
    assert res["targets"]["bytes_per_conn"]["pass"] is False
    assert res["targets"]["lookup_cost_ratio_1m_vs_1k"]["pass"] is True
    assert res["forward_pps"] is None
    assert calls == [("engine", True)]
    assert "seconds" in res["results"]["engine"]
    json.dumps(res)

    monkeypatch.setattr("lab.testing.lab_unavailable_reason", lambda: None)
    res = run.collect(["engine", "nfq"], False, "x", measurements={"engine": ok, "nfq": boom})
    assert "lab exploded" in res["results"]["nfq"]["error"]
    assert res["engine_pps_inprocess"] == 123


def test_parse_only():
    assert run.parse_only(None) == list(run.ORDER)
    assert run.parse_only("takeover,engine") == ["engine", "takeover"]
    with pytest.raises(argparse.ArgumentTypeError):
        run.parse_only("engine,warp")


def test_add_parser_registers_bench():
    p = argparse.ArgumentParser(prog="tandem")
    sub = p.add_subparsers(dest="command", required=True)
    run.add_parser(sub)
    args = p.parse_args(["bench", "--json", "--write", "docs/benchmarks.md", "--quick", "--only", "engine"])
    assert args.json and args.quick and args.write == "docs/benchmarks.md" and args.only == "engine"
    assert args.func is run.main_args
    assert run.command_line(args) == "tandem bench --json --write docs/benchmarks.md --quick --only engine"


def test_bench_packets_are_valid_and_forwarded():
    pkts = be.packets_for(range(5))
    for raw in pkts:
        pkt = P.parse(raw)
        assert P.ipv4_header_ok(raw) and P.l4_checksum_ok(raw, pkt)
        assert len(raw) == 20 + 8 + len(be.PAYLOAD)
    eng = be.Engine(be.config(), now=0.0)
    for raw in pkts:
        out = eng.handle(raw, 1.0)
        assert out is not None and out != raw
    assert eng.table.count == 5 and not any(eng.drops.values())


def test_fill_installs_established_connections():
    eng = be.Engine(be.config(), now=0.0)
    be.fill(eng, 300)
    assert eng.table.count == 300
    assert eng.sync_stats["created"] == 300 and eng.sync_stats["unbound"] == 0
    # packets of filled flows hit the table (no new connections)
    for raw in be.packets_for([0, 17, 299]):
        assert eng.handle(raw, 1.0) is not None
    assert eng.stats["conns_new"] == 0


def test_tiny_engine_run():
    r = be.engine_pps(n_flows=50, reps=2, rounds=1)
    assert r["engine_pps_inprocess"] > 0 and r["drops"] == 0
    m = be.lookup_and_memory(big_n=2000, small_n=100, sample=200, rounds=1)
    assert m["lookup_cost_ratio_1m_vs_1k"] > 0 and m["lookup_table_sizes"] == [100, 2000]
    assert "bytes_per_conn" in m
    s = be.split(quick=True, n_flows=50)
    assert s["us_per_packet"] > 0 and len(s["split_us"]) == 4 and s["profile_top"]
    mem = be.memory_breakdown(200)
    assert mem["object_sizes_sum"] > 0 and mem["tracemalloc_conns"] == 200


needs_cc = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")


@needs_cc
def test_generator_udp_on_loopback():
    from bench import cgen
    exe = cgen.binary()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    try:
        cp = subprocess.run([str(exe), "udp", "--dst", "127.0.0.1", "--port", str(port), "--flows", "4",
                             "--max", "64", "--seconds", "2", "--batch", "8"],
                            capture_output=True, text=True, timeout=10)
        out = json.loads(cp.stdout)
        assert out["mode"] == "udp" and out["sent"] == 64 and out["flows"] == 4
        rx.settimeout(1)
        assert len(rx.recv(100)) == 18
    finally:
        rx.close()


@needs_cc
def test_generator_tcp_against_its_server_on_loopback():
    from bench import cgen
    exe = cgen.binary()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    srv = subprocess.Popen([str(exe), "serve", "--port", str(port), "--name", "t1", "--seconds", "10"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert cgen.wait_until(lambda: socket.create_connection(("127.0.0.1", port), 0.2).close() or True, 5)
        cp = subprocess.run([str(exe), "tcp", "--dst", "127.0.0.1", "--port", str(port), "--conns", "4",
                             "--max", "20", "--seconds", "3"], capture_output=True, text=True, timeout=15)
        out = json.loads(cp.stdout)
        assert out["mode"] == "tcp" and out["ok"] == 20 and not any(out["errors"].values())
    finally:
        srv.terminate()
        srv.wait(5)


def test_generator_refuses_non_lab_targets():
    from bench import cgen
    with pytest.raises(ValueError):
        cgen.run_gen("nowhere", "udp", dst="8.8.8.8", seconds=1)


def test_compare_shows_every_figure_once_with_a_verdict(tmp_path):
    from bench import compare

    def res(pps, lag, drops=0):
        r = fake_result(forward_pps=pps)
        r["results"] = {"nfq": {"forward_pps": pps, "tandem": {"pps": pps, "generator": {"sent": 9}},
                                "activity_before": {"loadavg": [1.5, 1, 1], "calibration_ns": 120}},
                        "sync": {"sync_lag_p99_ms": lag, "drops": drops, "flows": 64, "ok": True}}
        return r

    before = [res(100, 5.0), res(110, 7.0)]
    after = [res(105, 9.0, drops=1), res(108, 9.5, drops=2)]
    path = tmp_path / "make-output.json"        # make's own lines come first
    path.write_text(".venv/bin/tandem bench --json\n" + json.dumps(before[0]))
    assert compare.load(path)["forward_pps"] == 100
    got = {p: (b, a, v) for p, b, a, v in compare.rows(before, after)}
    assert got["forward_pps"] == ([100, 110], [105, 108], "within noise")
    assert "results.nfq.forward_pps" not in got                 # shown once, at the top
    assert got["results.nfq.tandem.pps"][2] == "within noise"
    assert got["results.sync.sync_lag_p99_ms"][2] == "outside: +54.2 %"
    assert got["results.sync.drops"][2] == "outside: 0 -> 1.5"
    assert not any(".generator." in p or p.endswith(".flows") or "activity" in p for p in got)
    assert "results.sync.ok" not in got                         # booleans are not figures
    md = compare.markdown(before, after)
    assert "| `forward_pps` | 100 | 110 | 105 | 108 | within noise |" in md
    assert "| load average, 1 min, over the run | 1.5–1.5 |" in md


def test_takeover_master_down_and_what_a_drill_measured():
    from bench import takeover as tb
    assert tb.master_down_ms(0.1) == 360.9           # 3 x 100 ms + (256 - 100) x 100 / 256 ms
    assert tb.master_down_ms(0.01) == 36.1
    ok = {"fault_at": 10.0, "hold_started_at": 9.0, "takeover_ms": 320.0, "vrrp_takeover_ms": 300.0}
    assert tb._valid(ok, 3.5) == (None, 1.0)
    late = dict(ok, fault_at=12.0)
    assert "too late" in tb._valid(late, 3.5)[0]
    assert "too late" in tb._valid(dict(ok, takeover_ms=None), 3.5)[0]
    # an echo "through the new master" before it held the addresses is no takeover
    early = dict(ok, takeover_ms=4.8, vrrp_takeover_ms=313.5)
    assert "before the new master held the addresses" in tb._valid(early, 3.5)[0]


def test_render_takeover_variants_side_by_side_with_master_down_and_set_aside():
    res = fake_result()
    drill = {"drills": 2, "takeover_ms": [300.0, 400.0], "takeover_ms_p50": 350.0,
             "takeover_ms_max": 400.0, "master_down_ms": 360.9, "gap_ms_p99_max": 410.0,
             "gap_ms_max": 420.0}
    res["results"] = {"takeover": {
        "advert_100ms": drill,
        "advert_10ms": dict(drill, master_down_ms=36.1, set_aside=[
            {"set_aside": "first echo before the new master held the addresses (a starved client)",
             "fault_offset_s": 1.0, "takeover_ms": 4.8, "vrrp_takeover_ms": 313.5}]),
        "advert_10ms_sync_loss": dict(drill, drills=1),
    }, "sync": {"entries_per_conn": 4.98, "load": {"cps": 1402.0}}}
    text = report.render(res)
    rows = [ln for ln in text.splitlines() if ln.startswith("| 10 ms") or ln.startswith("| 100 ms")]
    assert [r.split(" | ")[0] for r in rows] == ["| 100 ms (default)", "| 10 ms", "| 10 ms, 20 % sync lost"]
    assert "| 360.9 |" in rows[0] and "| 36.1 |" in rows[1] and "410.0 / 420.0" in rows[0]
    assert "a starved client" in text and "takeover 4.8, VRRP 313.5" in text
    assert "| entries per new connection (entries/s over achieved connections/s) | 4.98 |" in text


def test_bench_tcp_exchanges_are_whole_connections_the_engine_closes():
    from collections import Counter
    from proto.consts import ASSURED, TCP_STATES
    pkts = be.tcp_exchanges(20)
    assert len(pkts) == 20 * 8
    eng = be.Engine(be.config(), now=0.0)
    assert all(eng.handle(p, 1.0) is not None for p in pkts)
    assert sum(eng.drops.values()) == 0
    assert Counter(TCP_STATES[c.state] for c in eng.table) == {"TIME_WAIT": 20}
    assert all(c.flags & ASSURED for c in eng.table)         # the client's ACK acked the SYN-ACK
    res = be.tcp_conn_cost(n=20)
    assert res["tcp_packets_per_conn"] == 8 and res["tcp_drops"] == 0


def test_tcp_conn_sync_cost_counts_the_default_policys_entries():
    """The sync figure's connections are synced as the node's are: five entries each (on
    the SYN and on ESTABLISHED, urgent; the 3rd inbound packet; the two closing states)."""
    res = be.tcp_conn_sync_cost(quick=True, n=20)
    assert res["sync_entries_per_tcp_conn"] == 5
    assert res["sync_datagrams_per_tcp_conn"] > 0
    assert res["engine_tcp_conn_sync_us"] > 0
    text = report.render_engine({**res, "engine_tcp_conn_us": 36.0})
    assert "the same with the default sync policy" in text and "5 entries" in text


def test_render_health_beside_its_design_figures():
    res = fake_result()
    res["results"] = {"health": {"interval_s": 0.5, "fall": 3, "rise": 2, "down_by_design_s": 1.5,
                                 "up_by_design_s": 1.0, "health_down_s": [1.2, 1.4],
                                 "health_down_s_p50": 1.3, "health_down_s_max": 1.4,
                                 "health_up_s": [0.6, 0.9], "health_up_s_p50": 0.75,
                                 "health_up_s_max": 0.9, "errors": []}}
    text = report.render(res)
    assert "## Health checks (`health`)" in text
    assert "| stopped -> down (out of scheduling) | 1.5 | 1.3 / 1.4 | 1.2, 1.4 |" in text
    assert "health" in run.ORDER and "health" in run.LAB_MEASUREMENTS


def test_conn_rate_servers_use_a_port_the_lab_leaves_free():
    """The lab's echo servers hold RS_PORT and PROXY_RS_PORT on every real server; a C line
    server on one of them cannot bind, and conn_rate failed with "the C line servers did not
    answer".  The node's services point only at the C servers' port, and are the plain ones."""
    from bench import conn_rate
    from lab import plan
    assert conn_rate.PORT not in (plan.RS_PORT, plan.PROXY_RS_PORT, plan.API_PORT)
    svcs = conn_rate._services()
    assert {(s["proto"], s["port"]) for s in svcs} == {("tcp", 80), ("udp", 80)}
    assert all(r["port"] == conn_rate.PORT for s in svcs for r in s["real_servers"])


def test_conn_rate_reports_the_nodes_cpu_per_connection():
    """conn_rate's load-independent figure: the node's CPU per connection, lowest of the
    rounds, rendered under the table with every round's value."""
    import os
    from bench import conn_rate
    assert conn_rate.node_cpu_s(os.getpid()) > 0
    r = {"connection": "c", "generator": "g", "servers": "s", "director_cpu": 1,
         "tandem": {"cps": 2000.0}, "conn_rate_node_cpu_us": 121.9,
         "samples_cps": {"tandem": [2000, 1900], "tandem_node_cpu_us_per_conn": [121.9, 125.3]}}
    text = report.render_conn(r)
    assert "per connection: 121.9 µs" in text and "121.9, 125.3" in text
    assert "per connection" not in report.render_conn({**r, "conn_rate_node_cpu_us": None})


def test_the_engine_report_shows_a_proxy_v2_service_next_to_a_plain_one_tcp_and_udp():
    """bench.proxy runs both families of service through the real engine (it raises if the
    engine dropped a packet), and the engine section of the report renders its table."""
    from bench import proxy
    from bench.report import render_engine
    r = proxy.run(quick=True)
    for key, fields in (("plain", ("data_in_us", "sack_ack_out_us")),
                        ("proxy_v2", ("data_in_us", "sack_ack_out_us")),
                        ("toa", ("early_data_in_us", "data_in_us", "sack_ack_out_us")),
                        ("udp_plain", ("dgram_in_us", "reply_out_us")),
                        ("udp_proxy_v2", ("dgram_in_us", "reply_out_us"))):
        assert all(r[key][f] > 0 for f in fields), (key, r)
    text = render_engine({"proxy_v2_vs_plain": r})
    assert "A PROXY-v2 service next to a plain one" in text
    assert "| UDP client datagram in (header prepended) |" in text
    assert "| packet | plain | proxy-v2 | toa |" in text and "(TOA: option in) |" in text
