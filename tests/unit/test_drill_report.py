"""The drill's report: its table, its plot, its UDP accounting, and its command line's
errors (the run itself is a lab test, tests/lab/test_drill.py)."""
import subprocess
import sys
from pathlib import Path

from lab import drill
from lab.drill_report import udp_outage

REPORT = {"fault": "kill", "target": "a", "conns": 200, "survived": 200, "reset": 0, "stalled": 0,
          "takeover_ms": 468.1, "interrupted": 200,
          "gap_ms": {"p50": 672.3, "p99": 688.6, "max": 688.8},
          "udp_flows": 10, "udp_lost": 30, "old_master": "a", "new_master": "b",
          "vrrp_takeover_ms": 333.7, "dual_master_ms": 0.0, "max_gap_ms": 688.8,
          "fault_at": 1000.5, "hold_started_at": 1000.0,
          "echo_bins_10ms": [100] * 50 + [0] * 60 + [100] * 90}

#: killing the backup: nothing was interrupted, nobody took over
QUIET = {**REPORT, "target": "b", "takeover_ms": None, "interrupted": 0, "new_master": "a",
         "vrrp_takeover_ms": None, "gap_ms": {"p50": 20.1, "p99": 24.0, "max": 31.5},
         "max_gap_ms": 31.5, "udp_flows": 0, "udp_lost": 0}


def test_table_names_every_figure():
    t = drill.table(REPORT)
    for want in ("kill a", "a -> b", "200/200 survived, 0 reset, 0 stalled", "333.7 ms",
                 "468.1 ms", "p99 688.6 ms", "two masters at once         0.0 ms", "30 datagrams lost"):
        assert want in t, t


def test_table_says_what_happened_instead_of_none():
    """Issue 17, item 9: killing the backup printed `None ms` for the takeover and the first
    echo; the table now says what happened."""
    t = drill.table(QUIET)
    assert "None" not in t, t
    assert "no takeover: a stayed master" in t and "no interruption" in t, t


def test_table_reports_the_json_figures():
    """Issue 17, item 10: every figure of the gap and silence rows is the JSON's."""
    t = drill.table(QUIET)
    g = QUIET["gap_ms"]
    assert f"p50 {g['p50']} ms, p99 {g['p99']} ms, max {g['max']} ms" in t, t
    assert f"longest silence of the run  {QUIET['max_gap_ms']} ms" in t, t


def test_plot_writes_a_png(tmp_path):
    for r in (REPORT, QUIET):
        out = tmp_path / "drill.png"
        drill.plot(r, str(out))
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_udp_loss_inside_and_outside_the_outage_window():
    """Issue 17, item 11: loss from the fault to just after the takeover is the outage's;
    loss elsewhere is a failure, and a flow that got echoes after the window continued."""
    fault, took = 100.0, 100.4
    ures = {"lost_runs": [[[50, 69, 99.99, 100.37]],        # the outage: 20 datagrams
                          [[50, 69, 99.99, 100.37], [200, 201, 103.0, 103.02]],  # + 2 later
                          [[50, 400, 99.99, 107.0]]],        # never came back
            "last_answered_sent_at": [107.0, 107.0, 99.97]}
    out = udp_outage(ures, fault, took, 0.02)
    assert out["udp_continued"] == 2
    assert out["udp_lost_outside"] > 2 and out["udp_lost_in_outage"] >= 40, out
    only_outage = udp_outage({"lost_runs": [ures["lost_runs"][0]],
                              "last_answered_sent_at": [107.0]}, fault, took, 0.02)
    assert (only_outage["udp_lost_in_outage"], only_outage["udp_lost_outside"]) == (20, 0)


def _drill_cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "tandem"
    return subprocess.run([str(exe), "drill", *args], capture_output=True, text=True, timeout=60)


def test_drill_errors_are_one_clear_line():
    """Issue 17, item 11: `--conns 0`, a bad option or no lab gave a traceback (or a usage
    block); each is now one line on stderr naming the problem, and a non-zero exit."""
    for args, want in ((["--conns", "0"], "--conns"),
                       (["--fault", "bogus"], "invalid choice: 'bogus'"),
                       (["--interval", "x"], "--interval"),
                       (["--prefix", "tnolab0", "--conns", "5"], "no pair lab 'tnolab0' is up")):
        cp = _drill_cli(*args)
        assert cp.returncode != 0, (args, cp)
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1 and want in lines[0] and lines[0].startswith("tandem drill: "), (args, cp.stderr)
        assert "Traceback" not in cp.stderr and not cp.stdout, (args, cp)


def test_drill_of_a_deployment_refuses_the_labs_faults_in_one_line():
    """Issue 17, item 14: against a deployment (`--vip`, `--api`) an explicit `--fault kill`
    silently became a resign, and `--fault-command` without `--fault command` was refused as
    fault 'kill'. The lab's faults reach into its namespaces, so each is refused with one line
    saying what a deployment offers; resign needs the token, command its command; with
    `--fault-command` alone the fault is `command`. (Loopback only: nothing is drilled.)"""
    dep = ["--vip", "127.0.0.1", "--port", "9", "--api", "a=http://127.0.0.1:9",
           "--api", "b=http://127.0.0.1:9", "--conns", "1"]
    for args, want in ((["--fault", "kill", "--token", "t"], "--fault kill needs the lab"),
                       (["--fault", "stop", "--token", "t"], "--fault stop needs the lab"),
                       ([], "--fault resign needs --token"),
                       (["--fault", "command"], "--fault command needs --fault-command")):
        cp = _drill_cli(*dep, *args)
        assert cp.returncode == 2, (args, cp)
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1 and want in lines[0], (args, cp.stderr)
    # --fault-command alone: the fault is the command (here one that fails at once)
    cp = _drill_cli(*dep, "--fault-command", "false", "--json")
    assert "not 'kill'" not in cp.stderr and "Traceback" not in cp.stderr, cp.stderr


async def test_takeover_is_when_the_interruption_ended_not_a_jitter_before_it(monkeypatch):
    """`make demo` printed "first echo after the fault 9.4 ms (200 connections interrupted)"
    for a kill whose new master held the addresses 290 ms after it: on a busy machine one
    connection was silent 64 ms (more than its cut, 2.5 intervals) just before the fault and
    got an echo the old master had passed on 9 ms after it, and the first such cut counted.
    The takeover is now when the first interrupted connection's longest silence ended:
    the held connections' echo path (HoldConn.data_received) with a fake clock."""
    from types import SimpleNamespace

    from lab.traffic import hold as H
    from lab.traffic.across import fault_report

    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(H, "time", SimpleNamespace(monotonic=lambda: clock.now,
                                                   time=lambda: 1e6 + clock.now))
    monkeypatch.setattr(H.HoldConn, "fault_ats", [1.0])
    monkeypatch.setattr(H.HoldConn, "origin", 0.0)

    def echoes(c, times):
        for t in times:
            clock.now = t
            c.send_times.append(t - 0.001)
            c.data_received(f"{c.i} {c.recv}\n".encode())

    steady = [k * 0.02 for k in range(1, 48)]                       # to 0.94 s
    jittery, calm = H.HoldConn(0), H.HoldConn(1)
    echoes(jittery, steady + [1.009, 1.70] + [1.70 + k * 0.02 for k in range(1, 15)])
    echoes(calm, steady + [0.96, 0.98, 1.72] + [1.72 + k * 0.02 for k in range(1, 14)])
    args = SimpleNamespace(fault_file="unused: the fault's time is known", interval=0.02)
    r = fault_report(args, [jittery, calm], 0.0, 1e6, [1.0])
    assert (r["takeover_ms"], r["interrupted"]) == (700.0, 2), r
    assert (r["gap_ms"]["p50"], r["gap_ms"]["max"]) == (740.0, 740.0), r


async def test_a_sequence_reports_each_steps_silences_apart(monkeypatch, tmp_path):
    """`tandem drill --sequence` (issue 16): one hold through several faults, the fault
    file listing their times in order; each step's report counts only the silences that
    ended after it and before the next step (HoldConn.data_received with a fake clock)."""
    import json
    from types import SimpleNamespace

    from lab.traffic import hold as H
    from lab.traffic.across import fault_reports, read_faults

    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(H, "time", SimpleNamespace(monotonic=lambda: clock.now,
                                                   time=lambda: 1e6 + clock.now))
    monkeypatch.setattr(H.HoldConn, "origin", 0.0)
    path = tmp_path / "fault.json"
    path.write_text(json.dumps({"at": [1e6 + 1.0, 1e6 + 3.0]}))
    ats = read_faults(str(path), 0.0, 1e6)
    assert ats == [1.0, 3.0]
    monkeypatch.setattr(H.HoldConn, "fault_ats", ats)

    def echoes(c, times):
        for t in times:
            clock.now = t
            c.send_times.append(t - 0.001)
            c.data_received(f"{c.i} {c.recv}\n".encode())

    every = lambda a, b: [round(a + k * 0.02, 3) for k in range(int(round((b - a) / 0.02)) + 1)]
    first, second = H.HoldConn(0), H.HoldConn(1)
    # first: cut 0.98 -> 1.30 by step 1, untouched by step 2
    echoes(first, every(0.02, 0.98) + every(1.30, 4.0))
    # second: untouched by step 1, cut 2.98 -> 3.50 by step 2
    echoes(second, every(0.02, 2.98) + every(3.50, 4.0))
    args = SimpleNamespace(fault_file=str(path), interval=0.02)
    r = fault_reports(args, [first, second], 0.0, 1e6, ats)
    one, two = r["faults"]
    assert r["fault"] == one and (one["at"], two["at"]) == (1e6 + 1.0, 1e6 + 3.0)
    assert (one["takeover_ms"], one["interrupted"], one["gap_ms"]["max"]) == (300.0, 1, 320.0), one
    assert (two["takeover_ms"], two["interrupted"], two["gap_ms"]["max"]) == (500.0, 1, 520.0), two
    # one fault: the report of old, no `faults`
    path.write_text(json.dumps({"at": 1e6 + 1.0}))
    assert read_faults(str(path), 0.0, 1e6) == [1.0]


def test_a_drill_sequence_is_checked_before_anything_runs():
    """`--sequence kill:b,...`: each step a known kind and a director letter; a target must
    be a member by then (a join adds one, and cannot add a member twice)."""
    import pytest

    from lab import drill_sequence as seq
    assert seq.parse_steps(seq.ISSUE_SEQUENCE) == [("kill", "b"), ("restore", "b"),
                                                   ("drain", "a"), ("join", "d")]
    seq._check_targets(seq.parse_steps("join:d,kill:d"), ("a", "b", "c"))
    for bad in ("explode:b", "kill", "kill:z", "kill:bb", ""):
        with pytest.raises(ValueError, match="KIND:DIRECTOR"):
            seq.parse_steps(bad)
    with pytest.raises(ValueError, match="no director d"):
        seq._check_targets(seq.parse_steps("kill:d"), ("a", "b", "c"))
    with pytest.raises(ValueError, match="a member already"):
        seq._check_targets(seq.parse_steps("join:c"), ("a", "b", "c"))
    cp = _drill_cli("--sequence", "kill:b", "--fault", "kill")
    assert cp.returncode == 2 and "--fault does not apply" in cp.stderr, cp.stderr


def test_drill_forwarding_picks_the_labs_service_and_refuses_what_it_cannot_drill():
    """Issue 13: `tandem drill --forwarding kernel` drills the lab's kernel-mode service
    (KERNEL_VIP); the table says which service was drilled.  What it cannot drill is one
    clear line: an IPv6 kernel-mode service (the lab has none), a deployment (its VIP is
    given), a mode that does not exist.  (No lab: nothing is drilled.)"""
    from lab.drill_pairs import LabPair
    from lab.plan import KERNEL_VIP
    assert LabPair("tx", forwarding="kernel").vip == KERNEL_VIP
    t = drill.table({**REPORT, "vip": KERNEL_VIP, "forwarding": "kernel"})
    assert t.splitlines()[0].split() == ["service", KERNEL_VIP, "(kernel", "forwarding)"], t
    assert "service" not in drill.table(REPORT)
    dep = ["--vip", "127.0.0.1", "--api", "a=http://127.0.0.1:9", "--api", "b=http://127.0.0.1:9"]
    for args, want in ((["--forwarding", "kernel", "--ipv6"], "IPv4 only"),
                       (["--forwarding", "kernel", *dep], "--forwarding picks the lab's service"),
                       (["--forwarding", "fast"], "invalid choice: 'fast'"),
                       (["--forwarding", "kernel", "--prefix", "tnolab0"], "no pair lab 'tnolab0'")):
        cp = _drill_cli(*args)
        assert cp.returncode == 2 if "no pair" not in want else cp.returncode == 1, (args, cp)
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1 and want in lines[0], (args, cp.stderr)
