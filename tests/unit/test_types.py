"""The type checker passes over the product's packages.

mypy runs with the project's configuration ([tool.mypy] in pyproject.toml: which
packages, which third-party modules lack types) and its incremental cache
(.mypy_cache), so an unchanged tree is checked again in about a second.  On
failure the message is mypy's own report, one line per error with file and line.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("proto", "director", "syncd", "ha", "schema", "tandem")


def test_mypy_is_clean():
    if importlib.util.find_spec("mypy") is None:
        pytest.fail("mypy is not installed in this venv: run `make setup` "
                    "(it is in the `test` extra of pyproject.toml)")
    run = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "pyproject.toml"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    report = run.stdout + run.stderr
    assert run.returncode == 0, f"mypy found errors:\n{report}"
    assert "Success: no issues found" in report, report


def test_mypy_checks_every_package():
    """The configuration names each package the check is promised for."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert set(CHECKED) <= set(config["files"])
    assert not config.get("ignore_errors") and not config.get("ignore_missing_imports")
