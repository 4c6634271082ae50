"""pyproject's package-data names files that exist: a pattern that matches nothing is dead."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_data_pattern_matches_a_file() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dead = [f"{package}: {pattern}"
            for package, patterns in setuptools["package-data"].items()
            for pattern in patterns
            if not any((ROOT / setuptools["package-dir"][package]).glob(pattern))]
    assert dead == []
