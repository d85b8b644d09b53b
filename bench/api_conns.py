"""GET /conns at 100k connections: how long one request keeps the event loop from
everything else (VRRP adverts, NFQUEUE reads) and how long it takes.

The real app (director.api.make_app) serves a real engine filled as sync fills a
backup's table (bench.engine.fill); aiohttp's test client asks over loopback.  A
ticker on the same loop wakes every 1 ms and records how late it ran: the worst
lateness during a request is the longest stretch the request held the loop.

    .venv/bin/python -m bench.api_conns [--conns 100000] [--rounds 5] [--json]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from bench.engine import REALS, config, fill
from director.api import make_app
from director.engine import Engine

TOKEN = "bench-token"
TICK = 0.001

QUERIES = (
    ("first page (limit 100)", "/conns"),
    ("one page deep in the table (offset 90000, limit 100)", "/conns?offset=90000"),
    ("filtered by service (limit 100)", "/conns?service=udp/198.18.0.100:80"),
    ("filtered by real server (limit 100)", f"/conns?real={REALS[3]}:8080"),
    ("the largest page (limit 10000)", "/conns?limit=10000"),
)


def node_for(engine: Engine) -> Any:
    try:
        from director.status import NodeParts
        return NodeParts("bench", "master", api_token=TOKEN)
    except ImportError:             # before the typed status contract
        from director.api import NodeState
        node = NodeState("bench", "master")
        node.token = TOKEN
        return node


class Ticker:
    """Records the worst lateness of a 1 ms timer while running: on the wall clock, and in
    CPU time of this thread (what other callbacks on the loop spent before the timer could
    run; on a busy machine the wall-clock figure also holds the time the OS ran others)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.worst_cpu = 0.0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + TICK
            cpu = time.thread_time()
            await asyncio.sleep(TICK)
            self.worst = max(self.worst, time.perf_counter() - due)
            self.worst_cpu = max(self.worst_cpu, time.thread_time() - cpu)

    def start(self) -> None:
        self.worst = self.worst_cpu = 0.0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> float:
        assert self._task is not None
        # let a wake-up that is already due record its lateness before the cancel
        await asyncio.sleep(3 * TICK)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        return self.worst


async def measure(n: int, rounds: int) -> dict[str, Any]:
    eng = Engine(config(max_conns=max(2 * n, 1000)), now=0.0)
    fill(eng, n, now=0.0)
    assert eng.table.count == n
    gc.collect(1)
    gc.freeze()         # as the node's GcFreezer does: full collections skip the table
    out: dict[str, Any] = {"conns": n, "rounds": rounds, "queries": []}
    async with TestClient(TestServer(make_app(eng, node_for(eng)))) as client:
        ticker = Ticker()
        idle = []
        for _ in range(rounds):         # the floor: lateness with no request at all
            ticker.start()
            await asyncio.sleep(0.05)
            idle.append(await ticker.stop())
        out["idle_loop_lateness_ms"] = {"median": round(sorted(idle)[len(idle) // 2] * 1e3, 2),
                                        "worst": round(max(idle) * 1e3, 2)}
        for label, path in QUERIES:
            for auth in (False, True):
                headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
                blocked, cpu, took = [], [], []
                for _ in range(rounds):
                    ticker.start()
                    await asyncio.sleep(0.005)
                    t0 = time.perf_counter()
                    resp = await client.get(path, headers=headers)
                    raw = await resp.read()
                    took.append(time.perf_counter() - t0)
                    blocked.append(await ticker.stop())
                    cpu.append(ticker.worst_cpu)
                    body = json.loads(raw)      # after: the client's parsing is not the server's
                    assert resp.status == 200, (path, resp.status)
                out["queries"].append({
                    "query": label, "path": path, "token": auth, "total": body["total"],
                    "returned": len(body["conns"]),
                    "loop_blocked_ms": {"best": round(min(blocked) * 1e3, 2),
                                        "median": round(sorted(blocked)[len(blocked) // 2] * 1e3, 2),
                                        "worst": round(max(blocked) * 1e3, 2)},
                    "loop_blocked_cpu_ms": {"median": round(sorted(cpu)[len(cpu) // 2] * 1e3, 2),
                                            "worst": round(max(cpu) * 1e3, 2)},
                    "request_ms_median": round(sorted(took)[len(took) // 2] * 1e3, 1),
                })
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conns", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    res = asyncio.run(measure(args.conns, args.rounds))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"GET /conns with {res['conns']} connections, {res['rounds']} rounds each "
          "(loop blocked: longest stretch without the loop, wall clock and CPU time, "
          "median of rounds [worst])")
    idle = res["idle_loop_lateness_ms"]
    floor = "no request (the machine's noise floor)"
    print(f"  {floor:<62} blocked {idle['median']:7.2f} ms "
          f"[{idle['worst']:7.2f}]")
    for q in res["queries"]:
        b, c = q["loop_blocked_ms"], q["loop_blocked_cpu_ms"]
        print(f"  {q['query']:<52} token={'yes' if q['token'] else 'no ':<3} "
              f"blocked {b['median']:7.2f} ms [{b['worst']:7.2f}]  cpu {c['median']:6.2f} ms "
              f"[{c['worst']:6.2f}]  request {q['request_ms_median']:7.1f} ms"
              f"  total={q['total']} returned={q['returned']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
