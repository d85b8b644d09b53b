"""The drills' scratch directory (the traffic tool's ready, fault and stop files) is removed
when the drill ends, whether it ran through or failed: a drill run on a schedule left one
directory behind per run.  The traffic tool here is a real process, a stand-in for
`lab.client hold` that keeps its file protocol (the run with real traffic is a lab test,
tests/lab/test_drill.py)."""
from __future__ import annotations

import sys
import tempfile
import time

import pytest

from lab import drill, drill_sequence

#: `hold`'s file protocol: the ready file once connected, then the JSON result (last line
#: of stdout) once the stop file appears; bounded in time whatever happens
FAKE_HOLD = """
import json, pathlib, sys, time
a = sys.argv[1:]
opt = lambda k: a[a.index(k) + 1]
conns = int(opt("--conns"))
pathlib.Path(opt("--ready-file")).write_text(json.dumps({"connected": conns}))
end = time.monotonic() + 20
while not pathlib.Path(opt("--stop-file")).exists() and time.monotonic() < end:
    time.sleep(0.01)
print(json.dumps({"connected": conns, "ok": conns, "reset": 0, "stalled": 0}))
"""


class FakePair:
    """A pair whose master is `a`: its client runs `argv`; a fault is instant."""
    names = ("a", "b")
    faults = ("kill",)
    vip, port = "198.18.0.1", 80

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.faulted = False

    def client_argv(self) -> list[str]:
        return self.argv

    def check(self) -> None:
        pass

    def status(self, name: str) -> dict:
        master = "b" if self.faulted else "a"
        return {"role": "master" if name == master else "backup"}

    def fault(self, target: str, kind: str, on_at=None) -> dict:
        at = time.time()
        if on_at is not None:
            on_at(at)
        self.faulted = True
        return {"at": at}

    def expected_master(self, fault: str, target: str) -> str | None:
        return None


@pytest.fixture
def scratch_root(tmp_path, monkeypatch):
    """Where the drills' temporary directories go, empty at the start."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_a_drill_that_ran_leaves_no_scratch_directory(scratch_root, tmp_path):
    script = tmp_path / "hold.py"
    script.write_text(FAKE_HOLD)
    report = drill.run(fault="kill", conns=3, duration=0.3, lead=0.1,
                       pair=FakePair([sys.executable, str(script)]))
    assert report["survived"] == 3 and report["new_master"] == "b"
    assert list(scratch_root.iterdir()) == []


def test_a_drill_whose_traffic_failed_leaves_no_scratch_directory(scratch_root):
    pair = FakePair([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exit 3"):
        drill.run(fault="kill", conns=3, duration=0.3, lead=0.1, pair=pair)
    assert list(scratch_root.iterdir()) == []


def test_a_sequence_whose_traffic_failed_leaves_no_scratch_directory(scratch_root,
                                                                       monkeypatch):
    pair = FakePair([sys.executable, "-c", "raise SystemExit(3)"])
    monkeypatch.setattr(drill_sequence, "LabCluster", lambda prefix, forwarding="engine": pair)
    with pytest.raises(RuntimeError, match="exit 3"):
        drill_sequence.run("nolab", [("kill", "a")])
    assert list(scratch_root.iterdir()) == []
