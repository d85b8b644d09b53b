"""The standard toolchain pair's files (lab.toolchain_conf) and the side-by-side verdict
(bench.toolchain): what they say, without root."""
from __future__ import annotations

from pathlib import Path

from bench import toolchain as bt
from lab import toolchain_conf as tc
from lab.plan import DIRECTORS, LADDRS, REAL_SERVERS, RS_PORT, SYNC_PORT, VIP


def test_every_daemon_file_is_its_own_never_the_system_default(tmp_path):
    a, b = tc.paths(tmp_path, "a"), tc.paths(tmp_path, "b")
    assert all(p.parent == tmp_path for p in [*a.values(), *b.values()])
    assert not set(a.values()) & set(b.values())
    conf = tc.conntrackd_conf("a", a)
    assert f"LockFile {a['ctd_lock']}" in conf and f"Path {a['ctd_sock']}" in conf
    assert "/var/lock" not in conf and "/var/run" not in conf


def test_conntrackd_syncs_ftfw_unicast_to_the_peer_on_the_lab_sync_port(tmp_path):
    conf = tc.conntrackd_conf("b", tc.paths(tmp_path, "b"))
    me, other = DIRECTORS[1], DIRECTORS[0]
    assert "Mode FTFW" in conf and "DisableExternalCache no" in conf
    assert f"IPv4_address {me['back_addr']}" in conf
    assert f"IPv4_Destination_Address {other['back_addr']}" in conf
    assert f"Port {SYNC_PORT}" in conf      # the lab's sync-loss rule drops it as tandem's
    # the service's addresses are synced; only the directors' own ones are ignored
    assert VIP not in conf and LADDRS[0] not in conf


def test_keepalived_is_vrrpv3_moving_vip_and_laddr_with_the_notify_hook(tmp_path):
    p = tc.paths(tmp_path, "a")
    conf = tc.keepalived_conf("a", p, 0.1)
    assert "vrrp_version 3" in conf and "advert_int 0.1" in conf
    assert f"priority {DIRECTORS[0]['priority']}" in conf
    assert f"{VIP}/32 dev front" in conf and f"{LADDRS[0]}/32 dev back" in conf
    assert f"notify {p['notify']}" in conf


def test_notify_hook_commits_on_master_and_asks_for_a_resync_on_backup(tmp_path):
    p = tc.paths(tmp_path, "a")
    s = tc.notify_script(p, "/usr/sbin/conntrackd")
    master = next(ln for ln in s.splitlines() if ln.strip().startswith("MASTER)"))
    flags = [w.rstrip(";") for w in master.split() if w.startswith("-") and w != "-C"]
    assert flags == ["-c", "-f", "-R", "-B"]       # commit, flush, resync, bulk send
    backup = next(ln for ln in s.splitlines() if ln.strip().startswith("BACKUP)"))
    assert [w.rstrip(";") for w in backup.split() if w.rstrip(";") in ("-t", "-n")] == ["-t", "-n"]
    assert s.splitlines()[1].startswith('echo "$EPOCHREALTIME $3"')


def test_nft_rules_dnat_round_robin_snat_to_the_floating_laddr_and_guard_the_stack():
    rules = tc.nft_ruleset()
    assert f"mod {len(REAL_SERVERS)} map" in rules and f": {RS_PORT}" in rules
    assert f"snat to {LADDRS[0]}" in rules and "ct status dnat" in rules
    assert f"ip daddr {VIP} tcp dport 80 counter drop" in rules


def test_states_are_read_in_time_order_and_garbage_is_skipped():
    text = "12.5 MASTER\nnot a line\n11,25 BACKUP\n13.0 FAULT\n"
    assert tc.parse_states(text) == [{"at": 11.25, "to": "backup"}, {"at": 12.5, "to": "master"},
                                     {"at": 13.0, "to": "fault"}]


def _kill(takeover: float, survived: int) -> dict:
    return {"takeover_ms": takeover, "vrrp_takeover_ms": takeover / 2, "survived": survived,
            "reset": 0, "stalled": bt.CONNS - survived, "max_gap_ms": takeover + 30,
            "oldest_conn_age_s": 0.1}


def test_verdict_matches_within_the_margin_and_says_plainly_when_tandem_loses():
    base = bt.summarize([_kill(650, 200), _kill(640, 200)], [], [])
    same = bt.summarize([_kill(660, 200), _kill(655, 200)], [], [])
    lossy = bt.summarize([_kill(420, 164), _kill(410, 200)], [], [])
    assert base["survived_share"] == 1.0 and lossy["survived_total"] == 364
    v = bt.verdict(same, base)
    assert v["takeover_matches_or_beats"] is True and v["survival_matches_or_beats"] is True
    v = bt.verdict(lossy, base)
    assert v["takeover_matches_or_beats"] is True and v["survival_matches_or_beats"] is False
    assert v["survived_share_difference"] == -0.09
    slow = bt.summarize([_kill(900, 200)], [], [])
    assert bt.verdict(slow, base)["takeover_matches_or_beats"] is False
    assert bt.verdict(bt.summarize([], [], ["x"]), base)["takeover_matches_or_beats"] is None
    # a drill set aside for its timing still counts for survival
    aside = bt.summarize([_kill(650, 200)], [_kill(0.3, 171)], [])
    assert (aside["drills"], aside["timed_drills"], aside["survived_total"]) == (2, 1, 371)
    assert aside["takeover_ms"] == [650]


def test_the_loss_rule_is_the_one_tandem_uses(monkeypatch):
    # the young-with-loss scenario drops sync at both pairs with lab.faults.sync_loss,
    # which matches tandem's sync port: conntrackd is configured on that port
    from lab import faults
    assert Path(faults.__file__).read_text().count("udp dport {SYNC_PORT}") == 1
    assert tc.CTD_PORT == SYNC_PORT


def test_report_shows_both_pairs_side_by_side_and_a_miss_plainly():
    from bench import report, report_toolchain
    from bench import run as bench_run
    assert "toolchain" in bench_run.ORDER and "toolchain" in bench_run.LAB_MEASUREMENTS
    kills = {"tandem": [_kill(420, 164)], "toolchain": [_kill(640, 200)]}
    sc = {w: bt.summarize(k, [], []) for w, k in kills.items()}
    sc["verdict"] = bt.verdict(sc["tandem"], sc["toolchain"])
    res = {"conns": bt.CONNS, "what": {"young_sync_loss": "young, sync lost"},
           "young_sync_loss": sc, "tandem_matches_or_beats_toolchain": False,
           "versions": {"keepalived": "Keepalived v2.2.7"}}
    text = report_toolchain.render_toolchain(res, report.fmt, report.table, report._err)
    assert "| young, sync lost | tandem, kernel mode | 1 (1) | 420 / 420 |" in text
    assert "| nft + keepalived + conntrackd | 1 (1) | 640 / 640 |" in text
    assert "164/200" in text and "200/200" in text and "❌ **no**" in text
    assert "Keepalived v2.2.7" in text
    assert "error" in report_toolchain.render_toolchain({"error": "boom"}, report.fmt,
                                                         report.table, report._err)
