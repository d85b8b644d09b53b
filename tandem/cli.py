"""The `tandem` command line."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Coroutine


def _load(path: str, who: str):
    """The config, or None after printing `FILE: FIELD: PROBLEM` (the caller exits 2)."""
    from director.config import ConfigError, load
    try:
        return load(path)
    except ConfigError as exc:
        print(f"{who}: bad config: {exc}", file=sys.stderr)
        return None


def _node(args: argparse.Namespace) -> int:
    cfg = _load(args.config, "tandem node")
    if cfg is None:
        return 2
    from director import scripts
    from tandem import node
    try:
        scripts.use(scripts.ScriptUser.resolve(cfg.script_user))
    except scripts.ScriptUserError as exc:
        print(f"tandem node: bad config: {args.config}: node.script_user: {exc}", file=sys.stderr)
        return 2
    from schema.core import FieldError
    run: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop
        run = uvloop.run
    except ImportError:
        import asyncio
        run = asyncio.run
    try:
        run(node.run(cfg, path=args.config))
    except FieldError as exc:       # found on this host: an address it cannot use
        print(f"tandem node: bad config: {args.config}: {exc.path}: {exc.problem}", file=sys.stderr)
        return 2
    return 0


#: `tandem check-config NEW --against OLD`: NEW is good, and only a restart applies it
EXIT_RESTART_NEEDED = 3


def _check(args: argparse.Namespace) -> int:
    """Exit 0 (good), 2 (bad: `FILE: FIELD: PROBLEM`) or, with `--against OLD` (the file
    the node runs now), 3 when what changed is applied only by a restart, so that a
    deployment tool knows whether to reload or restart (the Ansible role does)."""
    cfg = _load(args.config, "tandem check-config")
    if cfg is None:
        return 2
    said = f"{args.config}: ok ({len(cfg.services)} services)"
    if args.against is None:
        print(said)
        return 0
    from director.config import ConfigError, load, restart_keys, restart_needed
    try:
        old = load(args.against)
    except ConfigError as exc:      # nothing good runs from it: start afresh
        print(f"{said}; a restart applies it (the old config is bad: {exc.field}: {exc.problem})")
        return EXIT_RESTART_NEEDED
    changed = restart_keys(old, cfg) + [f"[{s}]" for s in restart_needed(old, cfg)]
    if changed:
        print(f"{said}; only a restart applies what changed: {', '.join(changed)}")
        return EXIT_RESTART_NEEDED
    print(f"{said}; a reload applies it")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lab import demo
    return demo.main(args.prefix, args.forwarding)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tandem", description="HA FULLNAT L4 load-balancer director")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    n = sub.add_parser("node", help="run one director node")
    n.add_argument("--config", required=True, help="the node's TOML file")
    n.set_defaults(func=_node)
    c = sub.add_parser("check-config", help="validate a node config and exit")
    c.add_argument("config")
    c.add_argument("--against", metavar="OLD",
                   help="the config the node runs now: exit 3 if only a restart applies the "
                        "difference, 0 if a reload does")
    c.set_defaults(func=_check)
    d = sub.add_parser("demo", help="lab up, traffic through the VIP, a table of who served it, lab down")
    d.add_argument("--prefix", default="tandem", help="the lab's namespace prefix (default %(default)s)")
    d.add_argument("--forwarding", choices=("kernel", "engine"), default="kernel",
                   help='the service the demo drives: "kernel" (the engine schedules each new '
                        'flow, the kernel forwards the rest; the default) or "engine" (every '
                        "packet through the engine)")
    d.set_defaults(func=_demo)
    try:
        from lab import cli as lab_cli
        from lab import drill
    except ImportError:
        pass
    else:
        lab_cli.add_parser(sub)
        drill.add_parser(sub)
    from director import ipvsadm
    ipvsadm.add_parser(sub)
    from tandem import cluster_cli
    cluster_cli.add_parser(sub)
    try:
        from bench import run as bench_run
    except ImportError:      # an install without the bench package
        pass
    else:
        bench_run.add_parser(sub)
    return p


class _UtcFormatter(logging.Formatter):
    """Stamps a line with its time in ISO 8601 UTC to the ms, as human output shows the
    API's epoch seconds (director.status.iso_utc)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        from director.status import iso_utc
        return iso_utc(record.created)


def log_formatter() -> logging.Formatter:
    """`2026-12-03T22:30:29.093Z tandem.health INFO Removing service ...`"""
    return _UtcFormatter("%(asctime)s %(name)s %(levelname)s %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(log_formatter())
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
