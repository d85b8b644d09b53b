"""Compare `tandem bench --json` outputs: every figure, side by side, before and after a change.

    .venv/bin/python -m bench.compare --before old1.json old2.json --after new1.json new2.json

Each file is what `make bench` (or `tandem bench --json`) printed; lines before the
JSON object (make's own output) are skipped.  Every numeric leaf of the object is a
figure, named by its dotted path (`results.sync.sync_lag_p99_ms`), except the parts
that describe the run rather than measure it (`machine`, the activity snapshots,
the generators' own counters, `targets`, which repeat the top-level keys).

A figure is *within noise* when the before and after ranges (min..max over the runs
of each side) overlap; otherwise the Markdown says by how much the medians moved.
With two runs a side that is a weak test, and says so: the point is to show every
figure, not to hide one behind a mean.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Iterable

#: subtrees that describe the run, not what it measured
SKIP_PARTS = frozenset({"machine", "activity_at_start", "activity_before", "activity_after",
                        "generator", "generator_only", "targets", "object_sizes"})
#: leaves that are settings of the run, the same in every run
SKIP_LEAVES = frozenset({"flows", "batch", "rounds", "payload_bytes", "conns", "rate", "size",
                         "profile_packets", "lookup_rounds", "tracemalloc_conns", "rate_cps",
                         "load_seconds", "conns_per_drill", "restore_conns", "advert_interval_s",
                         "director_cpu", "window_s", "lag_samples"})


def load(path: str | Path) -> dict[str, Any]:
    """The JSON object in a file that may start with make's output."""
    text = Path(path).read_text()
    start = 0 if text.startswith("{") else text.index("\n{") + 1
    return json.loads(text[start:])


def flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves by dotted path (booleans and lists are not figures)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in SKIP_PARTS:
                continue
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        leaf = prefix.rsplit(".", 1)[-1]
        if leaf not in SKIP_LEAVES and leaf != "seconds" or prefix == "seconds":
            out[prefix] = obj
    return out


def _span(xs: list[float]) -> tuple[float, float]:
    return min(xs), max(xs)


def verdict(before: list[float], after: list[float]) -> str:
    """'same', 'within noise' (the ranges overlap) or the move of the medians in %."""
    if not before or not after:
        return "only " + ("after" if after else "before")
    if set(before) == set(after) and len(set(before)) == 1:
        return "same"
    (b0, b1), (a0, a1) = _span(before), _span(after)
    if a0 <= b1 and b0 <= a1:
        return "within noise"
    mb, ma = statistics.median(before), statistics.median(after)
    if mb == 0:
        return f"outside: {mb:g} -> {ma:g}"
    return f"outside: {100 * (ma - mb) / abs(mb):+.1f} %"


def _repeated(path: str, flat: dict[str, float]) -> bool:
    """`results.<measurement>.<key>` that is also a top-level key: shown once, at the top."""
    parts = path.split(".")
    return len(parts) == 3 and parts[0] == "results" and parts[2] in flat


def conditions(run: dict[str, Any]) -> dict[str, Any]:
    """What the machine was doing: load average at the start of each measurement and at
    the end, and the range of the calibration loop's ns (plain Python speed)."""
    res = run.get("results", {})
    loads = [run.get("activity_at_start", {}).get("loadavg")]
    cal = [run.get("activity_at_start", {}).get("calibration_ns")]
    for r in res.values():
        for k in ("activity_before", "activity_after"):
            loads.append(r.get(k, {}).get("loadavg"))
            cal.append(r.get(k, {}).get("calibration_ns"))
    one_min = [x[0] for x in loads if x]
    cal = [c for c in cal if c is not None]
    return {"date": run.get("date"), "seconds": run.get("seconds"),
            "load_1min": (min(one_min), max(one_min)) if one_min else None,
            "calibration_ns": (min(cal), max(cal)) if cal else None,
            "cpu": run.get("machine", {}).get("cpu")}


def rows(before: list[dict], after: list[dict]) -> list[tuple[str, list, list, str]]:
    """(path, before values, after values, verdict), in the order of the first run's keys."""
    fb, fa = [flatten(r) for r in before], [flatten(r) for r in after]
    paths: list[str] = []
    for f in fb + fa:
        paths += [p for p in f if p not in paths and not _repeated(p, f)]
    out = []
    for p in paths:
        bv = [f[p] for f in fb if p in f]
        av = [f[p] for f in fa if p in f]
        out.append((p, bv, av, verdict(bv, av)))
    return out


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    if isinstance(x, int) or float(x).is_integer() and abs(x) >= 1000:
        return f"{int(x):,}"
    return f"{x:g}"


def markdown(before: list[dict], after: list[dict], labels: Iterable[str] | None = None) -> str:
    labels = list(labels or [*(f"before {i + 1}" for i in range(len(before))),
                             *(f"after {i + 1}" for i in range(len(after)))])
    runs = before + after
    cond = [conditions(r) for r in runs]
    rng = lambda t: f"{t[0]:g}–{t[1]:g}" if t else ""  # noqa: E731
    meta = ["| run | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1),
            "| date (UTC) | " + " | ".join(str(c["date"]) for c in cond) + " |",
            "| load average, 1 min, over the run | " + " | ".join(rng(c["load_1min"]) for c in cond) + " |",
            "| calibration loop, ns (plain Python speed) | "
            + " | ".join(rng(c["calibration_ns"]) for c in cond) + " |",
            "| total seconds | " + " | ".join(_fmt(c["seconds"]) for c in cond) + " |", ""]
    head = "| figure | " + " | ".join(labels) + " | verdict |"
    lines = [*meta, head, "|" + "---|" * (len(labels) + 2)]
    for path, bv, av, v in rows(before, after):
        cells = [_fmt(bv[i]) if i < len(bv) else "" for i in range(len(before))]
        cells += [_fmt(av[i]) if i < len(av) else "" for i in range(len(after))]
        lines.append(f"| `{path}` | " + " | ".join(cells) + f" | {v} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--before", nargs="+", required=True, metavar="JSON")
    p.add_argument("--after", nargs="+", required=True, metavar="JSON")
    p.add_argument("--labels", nargs="+", help="column titles, before runs first")
    a = p.parse_args(argv)
    print(markdown([load(x) for x in a.before], [load(x) for x in a.after], a.labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
