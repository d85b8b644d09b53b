"""The report's section for tandem in kernel mode against the standard toolchain pair
(`toolchain`, bench.toolchain): both pairs' drills side by side, and whether tandem
matches or beats the toolchain on takeover and on survival, scenario by scenario."""
from __future__ import annotations

from typing import Any

#: the summary rows this section adds (key, what)
HEADLINE = [
    ("tandem_matches_or_beats_toolchain",
     "tandem kernel mode matches or beats keepalived + conntrackd (takeover and survival, every scenario)"),
    ("tandem_kill_200_takeover_ms_p50", "kill, 200 connections: tandem takeover p50 (ms)"),
    ("toolchain_kill_200_takeover_ms_p50", "the same, the toolchain pair (ms)"),
    ("tandem_young_sync_loss_survived_share", "young connections, 20 % sync lost: tandem kept"),
    ("toolchain_young_sync_loss_survived_share", "the same, the toolchain pair kept"),
]

PAIR_LABELS = {"tandem": "tandem, kernel mode", "toolchain": "nft + keepalived + conntrackd"}


def _verdict(v: bool | None) -> str:
    return {True: "✅ yes", False: "❌ **no**", None: "–"}[v]


def render_toolchain(r: dict[str, Any] | None, fmt, table, err) -> str:
    lines = ["## tandem against the standard toolchain pair (`toolchain`)", ""]
    e = err(r)
    if e:
        return "\n".join(lines + [e, ""])
    v = r.get("versions") or {}
    lines += [f"Kill drills (links down, then SIGKILL) at {fmt(r.get('advert_interval_s'))} s "
              f"adverts, {fmt(r.get('conns'))} connections each writing every "
              f"{fmt(r.get('interval_s'))} s, alternating between two labs of the same "
              "topology. *tandem*: its kernel-mode service (KERNEL_VIP). *toolchain*: nftables "
              "dnat + snat, keepalived VRRPv3, conntrackd FTFW committed by keepalived's notify "
              f"hook ({'; '.join(x for x in v.values() if x)}). *takeover* = fault -> first echo "
              "through the new master; *VRRP* = fault -> the new master holds the addresses "
              "(the toolchain's: its notify hook's start); *silence* = a held connection's "
              "longest gap; *age* = the oldest connection's age at the fault, at most. "
              "Survival counts every drill; timing only the drills that measured a takeover "
              "(in brackets), the others are listed below the table.", ""]
    rows = []
    for key, what in (r.get("what") or {}).items():
        x = r.get(key) or {}
        for w, label in PAIR_LABELS.items():
            y = x.get(w) or {}
            rows.append([what if w == "tandem" else "", label,
                         f"{fmt(y.get('drills'))} ({fmt(y.get('timed_drills'))})",
                         f"{fmt(y.get('takeover_ms_p50'))} / {fmt(y.get('takeover_ms_max'))}",
                         f"{fmt(y.get('vrrp_takeover_ms_p50'))} / {fmt(y.get('vrrp_takeover_ms_max'))}",
                         y.get("gap_ms_max"),
                         f"{fmt(y.get('survived_total'))}/{fmt(y.get('conns_total'))}",
                         f"{fmt(y.get('reset_total'))} / {fmt(y.get('stalled_total'))}",
                         y.get("oldest_conn_age_s_max"),
                         ", ".join(fmt(s) for s in y.get("survived") or [])])
        verdict = x.get("verdict") or {}
        rows.append(["", "tandem matches or beats?", "",
                     _verdict(verdict.get("takeover_matches_or_beats")), "", "",
                     _verdict(verdict.get("survival_matches_or_beats")), "", "", ""])
    lines += [table(["scenario", "pair", "drills", "takeover p50 / max ms", "VRRP p50 / max ms",
                     "silence max ms", "kept", "resets / stalls", "age max s", "kept per drill"],
                    rows), ""]
    lines += ["*Matches* means takeover p50 and max at most 5 % (or 20 ms) above the toolchain's, "
              "and no smaller share of the held connections kept. "
              f"Overall: {_verdict(r.get('tandem_matches_or_beats_toolchain'))}.", ""]
    aside = [(key, w, d) for key in (r.get("what") or {}) for w in PAIR_LABELS
             for d in ((r.get(key) or {}).get(w) or {}).get("set_aside", [])]
    if aside:
        lines += ["Set aside from the timing (their survival counts): " + "; ".join(
            f"{key} {w}: {d.get('set_aside')} (takeover {fmt(d.get('takeover_ms'))}, "
            f"VRRP {fmt(d.get('vrrp_takeover_ms'))}, kept {fmt(d.get('survived'))}, "
            f"resets {fmt(d.get('reset'))})" for key, w, d in aside) + ".", ""]
    errs = [f"{key} {w}: {e}" for key in (r.get("what") or {}) for w in PAIR_LABELS
            for e in ((r.get(key) or {}).get(w) or {}).get("errors", [])]
    if errs:
        lines += ["Drill errors: " + "; ".join(f"`{e}`" for e in errs), ""]
    return "\n".join(lines)
