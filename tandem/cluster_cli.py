"""`tandem cluster withdraw --config FILE`: withdraw this director's routes when its node
is gone (docs/cluster.md, "When the node dies").

A cluster director announces its VIPs and laddrs through the include its BIRD reads
(`[cluster] announce_include`).  The node rewrites it on every change and empties it on a
graceful stop, but a node that dies (SIGKILL, a crash, the OOM killer) leaves the include
as it was, and BIRD, still running, keeps announcing: the router goes on sending new flows
to a director whose queue nobody reads.  This command does what the node would have done
last: it writes the empty announcement through the node's own adapter (ha/bird_io.py)
and makes BIRD read it (`birdc configure`), so the VIP's next hop and the laddrs go from
the router, and the peers, hearing the node silent, adopt its laddrs.  A service manager
runs it after the node's exit (the role's systemd unit: `ExecStopPost`; its supervisor
script tandemctl the same); `--file-only` empties the include without telling BIRD, for
a BIRD that is about to start (at boot, before the node runs).

Exit status: 0 withdrawn (BIRD took the empty announcement, or `--file-only` wrote it);
1 the include could not be written (the routes may still be announced); 2 a bad config
(`FILE: FIELD: PROBLEM`), or not a cluster director; 3 the include is empty but BIRD did not
take it now (not running, or it refused): BIRD reads it when it next starts or reconfigures.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

#: exit statuses (the module's docstring says what each means)
WITHDRAWN, NOT_WRITTEN, BAD_CONFIG, BIRD_NOT_TOLD = 0, 1, 2, 3
WHO = "tandem cluster withdraw"


def withdraw(path: str, file_only: bool = False, timeout: float = 5.0) -> tuple[int, str]:
    """Withdraw everything the director of config `path` announces: (exit status, what to
    print: the first word says what happened)."""
    from director.config import ConfigError, load
    from ha.bird_io import BirdAnnouncer, BirdError
    from schema.core import os_reason
    try:
        cfg = load(path)
    except ConfigError as exc:
        return BAD_CONFIG, f"{WHO}: bad config: {exc}"
    if cfg.mode != "cluster" or cfg.cluster is None:
        return BAD_CONFIG, (f"{WHO}: bad config: {path}: node.mode: is {cfg.mode!r}, not "
                            '"cluster": only a cluster director announces routes')
    cc = cfg.cluster
    bird = BirdAnnouncer(cc.announce_include, cc.bird_socket, timeout=timeout)
    try:
        bird.write([])
    except OSError as exc:
        return NOT_WRITTEN, (f"failed: {path}: cluster.announce_include: cannot write "
                             f"{cc.announce_include} ({os_reason(exc)}); the routes may still "
                             "be announced")
    if file_only:
        return WITHDRAWN, f"withdrawn: {cc.announce_include} announces nothing (BIRD not told)"
    try:
        bird.apply([])
    except (BirdError, OSError, subprocess.TimeoutExpired) as exc:
        why = os_reason(exc) if isinstance(exc, OSError) else str(exc)
        return BIRD_NOT_TOLD, (f"not-told: {cc.announce_include} announces nothing, but BIRD "
                               f"did not take it ({path}: cluster.bird_socket "
                               f"{cc.bird_socket}: {why}); it reads it when it next starts "
                               "or reconfigures")
    return WITHDRAWN, (f"withdrawn: {cc.announce_include} announces nothing and BIRD took it "
                       f"({cc.bird_socket})")


def _withdraw(args: argparse.Namespace) -> int:
    rc, said = withdraw(args.config, file_only=args.file_only, timeout=args.timeout)
    print(said, file=sys.stdout if rc == WITHDRAWN else sys.stderr)
    return rc


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `cluster` (and its `withdraw`) on the main CLI's subparsers."""
    p = subparsers.add_parser("cluster", help="a cluster director's routes, without its node")
    sub = p.add_subparsers(dest="cluster_command", required=True)
    w = sub.add_parser("withdraw", help="announce nothing (after the node died; exit 0 done, "
                                        "1 not written, 2 bad config, 3 BIRD not told)")
    w.add_argument("--config", required=True, help="the node's TOML file")
    w.add_argument("--file-only", action="store_true",
                   help="empty the include only, without `birdc configure` (before BIRD starts)")
    w.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="how long birdc may take (default %(default)s s)")
    w.set_defaults(func=_withdraw)
    return p
