"""bulk: stream bytes through the echo and compare their sha256 both ways."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from typing import Any

from .common import Deadline, classify


_NO_NL = bytes.maketrans(b"\n", b"\x0b")


async def bulk(args) -> dict[str, Any]:
    dl = Deadline(args.deadline)
    total = args.bytes
    rnd = random.Random(args.seed)
    h_sent, h_recv = hashlib.sha256(), hashlib.sha256()
    counts = {"sent": 0, "received": 0}
    result: dict[str, Any] = {}
    t0 = time.monotonic()
    w = None
    try:
        async with asyncio.timeout(dl.op(args.timeout)):
            r, w = await asyncio.open_connection(args.host, args.port, limit=1 << 20)

        async def sender() -> None:
            left = total
            while left > 0:
                n = min(args.chunk, left)
                chunk = rnd.randbytes(n)
                if not args.newlines:
                    chunk = chunk.translate(_NO_NL)
                h_sent.update(chunk)
                w.write(chunk)
                async with asyncio.timeout(dl.op(args.timeout)):
                    await w.drain()
                counts["sent"] += n
                left -= n
            if w.can_write_eof():
                w.write_eof()

        async def receiver() -> None:
            while counts["received"] < total:
                async with asyncio.timeout(dl.op(args.timeout)):  # idle timeout
                    data = await r.read(1 << 18)
                if not data:
                    break
                h_recv.update(data)
                counts["received"] += len(data)

        await asyncio.gather(sender(), receiver())
    except Exception as exc:  # noqa: BLE001 - reported
        result["error"] = classify(exc)
    finally:
        if w is not None:
            w.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await w.wait_closed()
    seconds = time.monotonic() - t0
    ok = counts["sent"] == total and counts["received"] == total
    result.update(
        {
            "bytes": total,
            "sent": counts["sent"],
            "received": counts["received"],
            "sha256_ok": ok and h_sent.digest() == h_recv.digest(),
            "seconds": round(seconds, 3),
            "mbit_per_s": round(counts["received"] * 8 / seconds / 1e6, 1) if seconds > 0 else None,
        }
    )
    return result
