"""Cluster mode in `tandem ipvsadm`: membership, the routes announced and the flows held
per member, as this director sees them (docs/cluster.md).

The source is /status `cluster` (tandem.cluster.ClusterRunner.status), the same object the
`tandem_cluster_*` metrics are read from (director.metrics_cluster), so the three views
never disagree.  ipvsadm has no cluster, so this is our own block.  Appended to the whole
`-L` listing (and printed alone by `--cluster`), it is made so that a script reading
ipvsadm's lines keeps reading them: none of its lines starts with a protocol name or with
`  ->`.  An operator on a director sees::

    Cluster member a: active (healthy; 3 members, 3 alive)
      Announced: 198.19.41.100/32 198.19.42.11/32
      Adopted:   none
      Flows:     1000 own, 504 of peers
      BIRD:      4 announcements, 0 refused; laddrs adopted 0, given back 0
      Member           Said      Alive Heard    Flows      Laddrs (served by another)
      a                active    yes   -        1000       198.19.42.11
      b                active    yes   0.104s   255        198.19.42.12
      c                -         no    2.513s   249        198.19.42.13 (by a)

*Flows* per member are the connections this director holds that use the member's laddrs
(every director holds every connection: sync among N); *Heard* is the time since its last
sync message; *Said* what its STATE message said (`joining`, `active`, `draining`,
`fault`, `leaving`; `-` before its first STATE).  A `Links down:` line names the tracked
interfaces that are down (the director then announces nothing), a `BIRD has:` line what
BIRD holds when it differs from what is announced.
"""
from __future__ import annotations

from typing import Any, Mapping

MEMBER_TITLE = "Member           Said      Alive Heard    Flows      Laddrs (served by another)"
#: the runner's counters shown on the BIRD line (key in `stats`, words)
_STATS = (("announces", "announcements"), ("bird_errors", "refused"))
_ADOPTION = (("adopted", "laddrs adopted"), ("given_back", "given back"))


def _words(items: list[str] | None) -> str:
    return " ".join(items) if items else "none"


def _heard(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}s"


def _laddrs(name: str, member: Mapping[str, Any]) -> str:
    """Each laddr, and who answers for it when that is not the member itself."""
    served = member.get("served_by") or {}
    out = []
    for a in member.get("laddrs") or []:
        by = served.get(a, name)
        out.append(a if by == name else f"{a} (by {by or 'nobody'})")
    return " ".join(out) or "-"


def format_cluster(cluster: Mapping[str, Any]) -> str:
    """The block for one director's /status `cluster` (see the module docstring)."""
    members = cluster["members"]
    alive = sum(1 for m in members.values() if m.get("alive"))
    why = f"{cluster['reason']}; " if cluster.get("reason") else ""
    lines = [f"Cluster member {cluster['name']}: {cluster['state']} "
             f"({why}{len(members)} members, {alive} alive)",
             f"  Announced: {_words(cluster.get('announced'))}"]
    if cluster.get("links_down"):
        lines.append(f"  Links down: {_words(cluster['links_down'])} (tracked: nothing announced)")
    bird_has = cluster.get("bird_has")
    if bird_has != cluster.get("announced"):
        lines.append(f"  BIRD has:  {'not told yet' if bird_has is None else _words(bird_has)}")
    lines += [f"  Adopted:   {_words(cluster.get('adopted'))}",
              f"  Flows:     {int(cluster.get('flows_owned') or 0)} own, "
              f"{int(cluster.get('flows_foreign') or 0)} of peers"]
    stats = cluster.get("stats") or {}
    if stats:
        lines.append("  BIRD:      "
                     + ", ".join(f"{int(stats.get(k, 0))} {w}" for k, w in _STATS) + "; "
                     + ", ".join(f"{w} {int(stats.get(k, 0))}" for k, w in _ADOPTION))
    if cluster.get("last_error"):
        lines.append(f"  Last error: {cluster['last_error']}")
    lines.append(f"  {MEMBER_TITLE}")
    for name, m in sorted(members.items()):
        lines.append("  %-16s %-9s %-5s %-8s %-10u %s" % (
            name, m.get("said") or "-", "yes" if m.get("alive") else "no",
            _heard(m.get("last_heard_s")), int(m.get("flows") or 0), _laddrs(name, m)))
    return "\n".join(lines) + "\n"
