"""The drill's report: its table and its plot (the run itself is a lab test)."""
from lab import drill

REPORT = {"fault": "kill", "target": "a", "conns": 200, "survived": 200, "reset": 0, "stalled": 0,
          "takeover_ms": 468.1, "gap_ms": {"p50": 672.3, "p99": 688.6, "max": 688.8},
          "udp_flows": 10, "udp_lost": 30, "old_master": "a", "new_master": "b",
          "vrrp_takeover_ms": 333.7, "dual_master_ms": 0.0, "max_gap_ms": 688.8,
          "fault_at": 1000.5, "hold_started_at": 1000.0,
          "echo_bins_10ms": [100] * 50 + [0] * 60 + [100] * 90}


def test_table_names_every_figure():
    t = drill.table(REPORT)
    for want in ("kill a", "a -> b", "200/200 survived, 0 reset, 0 stalled", "333.7 ms",
                 "468.1 ms", "p99 688.6 ms", "two masters at once         0.0 ms", "30 datagrams lost"):
        assert want in t, t


def test_plot_writes_a_png(tmp_path):
    out = tmp_path / "drill.png"
    drill.plot(REPORT, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
