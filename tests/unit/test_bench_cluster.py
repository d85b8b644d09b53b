"""The cluster benchmark's figures (3 directors against 1) from readings shaped as its
lab run takes them, the ratios, the public keys and the report's section.  No timing
assertions: the readings are made up, the arithmetic on them is what is checked."""
from __future__ import annotations

import pytest

from bench import cluster, report, run
from tests.unit.test_bench import fake_result


def reading(t, rs, verdicts, cpu_s):
    """One reading as bench.cluster._reading returns it."""
    return {"t": t, "rs": rs, "verdicts": verdicts, "cpu_s": cpu_s}


def window(t0, dt, rs_pkts, fwd, cpu):
    """Two readings dt apart: rs_pkts per real server, fwd (verdicts) and cpu (CPU s) per
    director over the window, on top of arbitrary counter bases."""
    before = reading(t0, {n: 1000 for n in rs_pkts}, {d: 5000 for d in fwd},
                     {d: 10.0 for d in cpu})
    after = reading(t0 + dt, {n: 1000 + v for n, v in rs_pkts.items()},
                    {d: 5000 + v for d, v in fwd.items()},
                    {d: (10.0 + v if v is not None else None) for d, v in cpu.items()})
    return cluster.window_figures(before, after)


def test_a_window_is_the_real_servers_sum_and_each_directors_share_and_cost():
    w = window(100.0, 2.0, {"rs1": 40_000, "rs2": 30_000, "rs3": 30_000},
               {"a": 50_000, "b": 30_000, "c": 20_000}, {"a": 0.5, "b": 0.3, "c": None})
    assert w["pps"] == 50_000 and w["window_s"] == 2.0
    assert w["directors"]["a"] == {"pps": 25_000, "share": 0.5, "cpu_share": 0.25,
                                   "pps_per_cpu_s": 100_000}
    assert w["directors"]["b"]["share"] == 0.3 and w["directors"]["b"]["pps_per_cpu_s"] == 100_000
    assert w["directors"]["c"]["cpu_share"] is None and w["directors"]["c"]["pps_per_cpu_s"] is None
    with pytest.raises(ValueError):
        cluster.window_figures(reading(1.0, {}, {}, {}), reading(1.0, {}, {}, {}))


def test_best_of_rounds_the_measured_ratio_and_the_projection_by_the_busiest_director():
    rs = lambda n: {"rs1": n // 2, "rs2": n - n // 2}   # noqa: E731
    three = [window(0, 1.0, rs(60_000), {"a": 20_000, "b": 20_000, "c": 20_000},
                    {"a": 0.4, "b": 0.4, "c": 0.4}),
             # the best round: c gets half the flows, so it is the one that saturates first
             window(10, 1.0, rs(80_000), {"a": 20_000, "b": 20_000, "c": 40_000},
                    {"a": 0.25, "b": 0.25, "c": 0.5})]
    one = [window(5, 1.0, rs(50_000), {"a": 50_000, "b": 0, "c": 0}, {"a": 0.5, "b": 0.01, "c": 0.01}),
           window(15, 1.0, rs(40_000), {"a": 40_000, "b": 0, "c": 0}, {"a": 0.4, "b": 0.01, "c": 0.01})]
    s = cluster.summarize({"3": three, "1": one})
    assert s["samples_pps"] == {"3": [60_000, 80_000], "1": [50_000, 40_000]}
    assert (s["cluster_pps_3"], s["cluster_pps_1"]) == (80_000, 50_000)
    assert s["cluster_pps_ratio"] == 1.6
    # every director forwards 80k per CPU-second; c's share 0.5 caps the cluster at 160k;
    # the drained directors (share 0) do not count in the single director's projection
    assert s["cluster_projected_pps_3"] == 160_000 and s["cluster_projected_pps_1"] == 100_000
    assert s["cluster_projected_ratio"] == 1.6
    assert s["cluster_split_3"] == {"a": 0.25, "b": 0.25, "c": 0.5}
    empty = cluster.summarize({"3": three, "1": []})
    assert empty["cluster_pps_ratio"] is None and empty["cluster_projected_ratio"] is None


def test_keys_order_and_the_report_section():
    for key in ("cluster_pps_3", "cluster_pps_1", "cluster_pps_ratio", "cluster_projected_ratio",
                "cluster_cps_3", "cluster_cps_1", "cluster_cps_ratio", "cluster_cps_projected_ratio"):
        assert run.KEYS[key] == "cluster"
    assert "cluster" in run.LAB_MEASUREMENTS and run.parse_only("cluster") == ["cluster"]
    windows = {"3": [window(0, 2.0, {"rs1": 90_000}, {"a": 30_000, "b": 30_000, "c": 30_000},
                            {"a": 0.3, "b": 0.3, "c": 0.3})],
               "1": [window(3, 2.0, {"rs1": 50_000}, {"a": 50_000, "b": 0, "c": 0},
                            {"a": 0.5, "b": 0.0, "c": 0.0})]}
    cps_windows = {"3": [cps_window(0, 3000, {"a": 9000, "b": 9000, "c": 12000})],
                   "1": [cps_window(5, 1200, {"a": 12000, "b": 0, "c": 0})]}
    summary = cluster.results(windows, cps_windows)
    res_cluster = {**summary, "rounds": 1, "window_seconds": 4.0,
                   "shapes": {"3": "all three", "1": "a alone"}, "load": "gen",
                   "loadavg_at_start": [1.0, 0.5, 0.25],
                   "status_after": {"a": {"state": "active", "flows_owned": 7, "flows_foreign": 3}}}
    res = fake_result(**{k: summary[k] for k in run.KEYS if run.KEYS[k] == "cluster"},
                      results={"cluster": res_cluster})
    text = report.render(res)
    assert "(`cluster`)" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| `cluster_pps_ratio`"))
    assert "1.8" in line                          # 45,000 / 25,000
    assert "Measured 3 / 1: **1.8**" in text
    assert "Measured 3 / 1: **2.5**" in text              # 3,000 / 1,200 connections/s
    assert ("| 3 directors (a, b, c announce) | 3,000 | 1 | a 30%, b 30%, c 40% | a 133.3, b 133.3, c 133.3 |"
            in text)
    assert "7,500 / 3,000 connections/s = **2.5**" in text
    assert "| 3 directors (a, b, c announce) | a | 15,000 | 33% |" in text
    assert "a active, owns 7, holds 3 of its peers'" in text
    assert "the generator was the limit" not in text      # no offered rate in these windows
    windows["3"][0]["offered_pps"] = 46_000                 # 45,000 forwarded: bound by the load
    windows["1"][0]["offered_pps"] = 100_000
    text = report.render(fake_result(results={"cluster": {**res_cluster, **cluster.summarize(windows)}}))
    assert "the generator was the limit of: 3 directors (a, b, c announce) (" in text
    assert "**error:** `boom`" in report.render(fake_result(results={"cluster": {"error": "boom"}}))


def cps_window(t0, cps, fwd, cpu=None):
    """A new-connection window as bench.cluster._cps_window returns it: the generator's
    figures and the readings' per-director split over 1 s (node CPU 0.4 s each unless
    given)."""
    fig = window(t0, 1.0, {}, fwd, cpu or {d: 0.4 for d in fwd})
    return {"cps": cps, "ok": cps, "errors": {"connect": 1, "reset": 0}, "window_s": 1.0,
            "directors": fig["directors"], "cpu_busy": [1.0, 0.5]}


def test_connections_best_of_rounds_and_their_ratio():
    s = cluster.summarize_cps({"3": [cps_window(0, 2000, {"a": 1}), cps_window(1, 2600, {"a": 1})],
                               "1": [cps_window(2, 1300, {"a": 1})]})
    assert s["samples_cps"] == {"3": [2000, 2600], "1": [1300]}
    assert (s["cluster_cps_3"], s["cluster_cps_1"], s["cluster_cps_ratio"]) == (2600, 1300, 2.0)
    assert cluster.summarize_cps({"3": [], "1": []})["cluster_cps_ratio"] is None
    # a alone at 0.5 CPU owns every connection; b and c, drained, apply its entries at 0.1
    one = cps_window(0, 2000, {"a": 20_000, "b": 0, "c": 0}, {"a": 0.5, "b": 0.1, "c": 0.1})
    # three: each owns a third and applies the others' (c gets more of the router's hash)
    three = cps_window(1, 3000, {"a": 9000, "b": 9000, "c": 12000}, {"a": 0.4, "b": 0.4, "c": 0.6})
    s = cluster.summarize_cps({"3": [three], "1": [one]})
    assert s["cpu_us_per_conn"]["1"] == {"a": 250.0, "b": 50.0, "c": 50.0}
    assert s["cpu_us_per_conn"]["3"] == {"a": 133.3, "b": 133.3, "c": 200.0}
    # c saturates first: 3000 / 0.6; a alone: 2000 / 0.5 (b and c would go on to 20,000)
    assert s["projected_cps"] == {"3": 5000, "1": 4000}
    assert s["cluster_cps_ratio"] == 1.5 and s["cluster_cps_projected_ratio"] == 1.25


def test_the_benchmarks_udp_service_is_read_by_every_director_with_its_own_laddrs():
    from director.config import parse
    from lab import cluster as lab_cluster, cluster_plan
    desc = cluster_plan.plan("tbcl", 3, kernel=False)
    for d in desc["directors"]:
        cfg = parse(lab_cluster.node_config("tbcl", desc, d["name"],
                                            [cluster.udp_service(), cluster.tcp_service()]),
                    f"{d['name']}.toml")
        tcp = [s for s in cfg.services if s.port == cluster.CPS_PORT]
        assert len(tcp) == 1 and tcp[0].proto == "tcp" and list(tcp[0].laddrs) == d["laddrs"]
        udp = [s for s in cfg.services if s.proto == "udp"]
        assert len(udp) == 1 and udp[0].port == cluster.UDP_PORT and udp[0].scheduler == "maglev"
        assert list(udp[0].laddrs) == d["laddrs"]
        assert {r.addr for r in udp[0].real_servers} == {r["addr"] for r in desc["real_servers"]}
