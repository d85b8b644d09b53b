"""The kernel fast path's benchmark code: ratios to plain nftables NAT, the targets they
are held to, the report's sections, and the memory fill through the real ctnetlink
decoder.  No timing assertions."""
from __future__ import annotations

from bench import kmem, kpath, report, run
from tests.unit.test_bench import fake_result


def test_ratios_are_best_of_rounds_over_plain_nat_and_the_kernel_path_is_held_to_targets():
    samples = {
        "tput_1": {"direct": [10.0, 12.0], "nft_nat": [8.0, 10.0], "kernel": [9.5, 9.0], "engine": [0.5, 0.7]},
        "tput_4": {"direct": [1.0], "nft_nat": [2.0], "kernel": [1.7], "engine": []},
        "udp_pps": {"direct": [3], "nft_nat": [0], "kernel": [2], "engine": [1]},
        "cps": {"direct": [20000], "nft_nat": [10000], "kernel": [7000], "engine": [3000]},
    }
    s = kpath.summarize(samples)
    assert s["best"]["tput_1"] == {"direct": 12.0, "nft_nat": 10.0, "kernel": 9.5, "engine": 0.7}
    assert s["ratios"]["tput_1"] == {"direct": 1.2, "kernel": 0.95, "engine": 0.07}
    assert s["ratios"]["tput_4"]["engine"] is None          # not measured
    assert s["ratios"]["udp_pps"]["kernel"] is None         # no base to divide by
    assert s["checks"]["tput_1"]["pass"] is True
    assert s["checks"]["tput_4"]["pass"] is False            # 0.85 < 0.9
    assert s["checks"]["udp_pps"]["pass"] is None
    assert s["checks"]["cps"] == {"ratio": 0.7, "target": ">= 0.7", "pass": True}


def test_every_path_ends_at_one_real_server_and_only_lab_addresses():
    dsts = {p: kpath.dst_of(p) for p in kpath.PATHS}
    assert len(set(dsts.values())) == 4
    assert all(a.startswith("198.18.") or a.startswith("198.19.") for a in dsts.values())
    svcs = kpath.services()
    assert {s["forwarding"] for s in svcs} == {"engine", "kernel"}
    assert all(len(s["real_servers"]) == 1 and s["real_servers"][0]["addr"] == dsts["direct"]
               for s in svcs)
    script = kpath.nat_script("198.18.1.10", dsts["direct"])
    assert f"dnat to {dsts['direct']}" in script and f"snat to {kpath.NAT_LADDR}" in script
    assert "ct event set 0" in script


def test_kernel_keys_targets_and_report_sections():
    for key in ("kernel_tput_ratio_1", "kernel_tput_ratio_4", "kernel_pps_ratio", "kernel_cps_ratio"):
        assert run.KEYS[key] == "kpath"
    assert run.TARGETS["kernel_cps_ratio"] == (">=", 0.7)
    assert run.TARGETS["kernel_bytes_per_conn"] == ("<=", 150)
    assert run.parse_only("kpath,kmem") == ["kmem", "kpath"]
    s = kpath.summarize({m: {p: [1.0] for p in kpath.PATHS} for m in kpath.METRICS})
    kp = {**s, "samples": {}, "rounds": 2, "kernel_node_cpu_us_per_conn": 40.0}
    km = {"rss": {"flows": 10, "bytes_per_conn": 700}, "traced": {"flows": 10, "by_file": {"x.py": 5.0}},
          "conntrack_slab": {"objsize": 256}}
    res = fake_result(kernel_tput_ratio_1=1.0, kernel_bytes_per_conn=700,
                      results={"kpath": kp, "kmem": km})
    text = report.render(res)
    assert "(`kpath`)" in text and "(`kmem`)" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| `kernel_bytes_per_conn`"))
    assert "miss" in line
    line = next(ln for ln in text.splitlines() if ln.startswith("| `kernel_tput_ratio_1`"))
    assert "pass" in line
    assert "| (c) tandem" in text and "40" in text


def test_memory_fill_goes_through_the_decoder_into_both_views():
    events = kmem.Events()
    flows, src = kmem.views(100.0)
    kmem.fill(flows, 50, events)
    assert len(flows.flows) == 50 and len(src.flows) == 50
    assert flows.active_inactive(0x54440001) == (50, 0)        # all ESTABLISHED
    assert sum(len(q) for q in src._due.values()) == 50       # each holds its refresh
    assert src.stats["entries"] == 100                          # SYN and ESTABLISHED sent
