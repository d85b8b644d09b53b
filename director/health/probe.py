"""One probe of one real server, through its kind's plug-in, bounded by the check's timeout."""
from __future__ import annotations

import asyncio
import os

from director.health.config import HealthCheckConfig, load_kind


class ProbeFailed(Exception):
    pass


async def run_probe(check: HealthCheckConfig, addr: str, port: int) -> tuple[bool, str]:
    """(ok, detail)."""
    try:
        kind = load_kind(check.kind)
    except LookupError:
        return False, f"unknown check kind {check.kind!r}"
    try:
        return True, await kind.probe(check, addr, check.port or port)
    except asyncio.TimeoutError:
        return False, f"timed out after {check.timeout:g}s"
    except ProbeFailed as exc:
        return False, str(exc)
    except OSError as exc:
        # the errno's text: asyncio's refused connect says "Connect call failed (addr, port)"
        return False, os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
    except (ValueError, UnicodeError) as exc:
        return False, f"bad answer: {exc}"
