"""Benchmarks of tandem: the packet path, connection rate, sync and failover.

`tandem bench` (bench.run) runs them and prints one JSON object; `--write FILE`
renders it as Markdown (bench.report).  Each measurement is a module with a
`run(quick: bool) -> dict` that is bounded in time and cleans up after itself.
"""
