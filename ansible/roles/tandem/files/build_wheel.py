#!/usr/bin/env python3
"""Build tandem's wheel from a checkout, on the Ansible controller, reproducibly.

    build_wheel.py (--source CHECKOUT | --wheel FILE) --out DIR [--find-links WHEELHOUSE [--pack]]

The checkout is copied to a scratch directory first (without VCS data,
virtualenvs, caches and build output), so the build never writes into the
checkout and never picks up stale files from an old build/ directory.  The
wheel's timestamps come from SOURCE_DATE_EPOCH, so the same sources give the
same wheel.  If DIR already holds a wheel of that name with the same contents,
it is left alone (its bytes, and so the copies Ansible makes of it, do not
change).  With --find-links, the build backend comes from that directory and
no package index is used (offline); with --pack as well, the wheels of that
directory are packed into DIR/wheelhouse.tar (sorted, fixed owner and times,
rewritten only when the wheels changed), so the hosts get them in one transfer.

Prints one JSON line: {"changed": bool, "wheel": path, "name": file name,
"wheelhouse_tar": path or null}.  With --wheel, nothing is built: that wheel
is taken as it is (and put into DIR the same way).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "venv", "__pycache__", "*.pyc", "build", "dist", "*.egg-info",
    ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache", ".tox", ".nox",
    ".ansible", "node_modules",
)
#: 1980-01-01, the earliest time a zip file can record
SOURCE_DATE_EPOCH = "315532800"


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def pack(wheelhouse: Path, dest: Path) -> bool:
    """Pack wheelhouse/*.whl into the tar file dest; True if dest was (re)written."""
    wheels = sorted(wheelhouse.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"build_wheel: no wheels in {wheelhouse}")
    want = {w.name: w.read_bytes() for w in wheels}
    if dest.exists():
        with tarfile.open(dest) as tf:
            have = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
        if have == want:
            return False
    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in want.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(SOURCE_DATE_EPOCH), 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with open(wheelhouse / name, "rb") as fh:
                tf.addfile(info, fh)
    os.replace(tmp, dest)
    return True


def build(source: Path, tmp: Path, find_links: Path | None, timeout: float) -> Path | None:
    if not (source / "pyproject.toml").is_file():
        print(f"build_wheel: no pyproject.toml in {source}", file=sys.stderr)
        return None
    stage, built = tmp / "src", tmp / "out"
    shutil.copytree(source, stage, ignore=IGNORE, symlinks=True)
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(built), str(stage)]
    if find_links:
        cmd[4:4] = ["--no-index", "--find-links", str(find_links.resolve())]
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, PIP_DISABLE_PIP_VERSION_CHECK="1")
    cp = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=timeout, check=False)
    if cp.returncode != 0:
        print(f"build_wheel: {' '.join(cmd)} failed ({cp.returncode}):\n{cp.stdout}{cp.stderr}", file=sys.stderr)
        return None
    wheels = sorted(built.glob("*.whl"))
    if len(wheels) != 1:
        print(f"build_wheel: expected one wheel, got {[w.name for w in wheels]}", file=sys.stderr)
        return None
    return wheels[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", type=Path, help="the checkout to build from")
    src.add_argument("--wheel", type=Path, help="a prebuilt wheel to use instead")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--find-links", type=Path)
    ap.add_argument("--pack", action="store_true", help="pack the --find-links wheels into DIR/wheelhouse.tar")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tandem-wheel-") as tmp:
        if args.wheel:
            new = args.wheel.resolve()
        else:
            new = build(args.source.resolve(), Path(tmp), args.find_links, args.timeout)
            if new is None:
                return 1
        dest = args.out / new.name
        changed = not dest.exists() or members(dest) != members(new)
        if changed:
            tmp_dest = args.out / (new.name + ".tmp")
            shutil.copyfile(new, tmp_dest)
            os.replace(tmp_dest, dest)
        # older builds of the same distribution (another version) are removed
        dist = new.name.split("-")[0]
        for old in args.out.glob(f"{dist}-*.whl"):
            if old.name != new.name:
                old.unlink()
                changed = True
    tar = None
    if args.pack and args.find_links:
        tar = args.out / "wheelhouse.tar"
        changed = pack(args.find_links, tar) or changed
    print(json.dumps({"changed": changed, "wheel": str(dest.resolve()), "name": dest.name,
                      "wheelhouse_tar": str(tar.resolve()) if tar else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
