"""The README's Configuration and Library use sections say what the code does: every setting
is in the table, and the library example runs as printed."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from creditsync import compat, config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.DOTALL | re.MULTILINE)
    assert match is not None, f"the README has no '## {title}' section"
    return match.group(1)


def test_every_setting_is_in_the_configuration_table() -> None:
    table = section("Configuration")
    missing = [config.variable(name) for name in config.Settings.model_fields
               if f"`{config.variable(name)}`" not in table]
    assert missing == []
    assert "`CREDITSYNC_WIX_PUBLIC_KEY` (or `_FILE`)" in table


def test_the_library_section_names_every_compat_function() -> None:
    text = section("Library use")
    public = [name for name, fn in inspect.getmembers(compat, inspect.isfunction)
              if fn.__module__ == compat.__name__ and not name.startswith("_")]
    assert public
    for name in public:
        assert f"compat.{name}" in text, name
    for original in ("syncInstanceCredits", "syncAllInstanceCredits", "updateInstancePlan"):
        assert f"`{original}`" in text


def test_the_library_example_runs_as_printed(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", section("Library use"), re.DOTALL)
    assert len(blocks) == 1
    env = {**os.environ, "CREDITSYNC_DATABASE_URL": "sqlite:///./creditsync.db"}
    subprocess.run([sys.executable, "-m", "creditsync.cli.main", "db", "upgrade"], env=env,
                   cwd=tmp_path, check=True, capture_output=True, timeout=120)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 (our own README)
    assert scope["outcome"] == "applied"
