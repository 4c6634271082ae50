"""`creditsync run --dev`'s banner: commands that work as printed, even when the virtualenv's
`bin/` (where the README installs creditsync) is not on PATH."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from creditsync.cli import serve


def script(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "creditsync"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def commands(banner: str) -> list[str]:
    """The banner's command lines, without the comments."""
    return [line.strip() for line in banner.splitlines()
            if line.startswith("  ") and not line.strip().startswith("#")]


def test_the_banner_calls_the_running_executable_by_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = script(tmp_path / "venv" / "bin")
    monkeypatch.setattr(sys, "argv", [str(running), "run", "--dev"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")

    banner = serve.dev_banner("127.0.0.1", 8080)

    assert f"  {running} dev webhook PaidPlanPurchased --instance demo-1 --product pro" in banner
    assert f'"Authorization: Bearer $({running} dev token --instance demo-1)"' in banner
    assert f"{running} dev webhook PaidPlanPurchased --instance demo-1 --product scale --forge" in (
        banner)
    assert not any(line.startswith("creditsync ") or "$(creditsync " in line
                   for line in commands(banner))


def test_a_relative_invocation_is_printed_as_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = script(tmp_path / ".venv" / "bin")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [".venv/bin/creditsync", "run", "--dev"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert serve.executable() == str(running)


def test_a_path_with_spaces_is_quoted_for_the_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = script(tmp_path / "my venv" / "bin")
    monkeypatch.setattr(sys, "argv", [str(running)])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert serve.executable() == shlex.quote(str(running))
    assert f"$({shlex.quote(str(running))} dev token" in serve.dev_banner("127.0.0.1", 8080)


def test_the_plain_name_when_path_finds_this_same_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = script(tmp_path / "bin")
    monkeypatch.setattr(sys, "argv", [str(running)])
    monkeypatch.setenv("PATH", f"{running.parent}:/usr/bin")
    assert serve.executable() == "creditsync"
    other = script(tmp_path / "other")
    monkeypatch.setenv("PATH", f"{other.parent}:{running.parent}:/usr/bin")
    assert serve.executable() == str(running)  # PATH would find another creditsync first


def test_run_as_a_module_it_names_the_script_beside_the_interpreter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["/somewhere/creditsync/cli/main.py", "run", "--dev"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    beside = Path(sys.executable).parent / "creditsync"
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python3"))
    assert serve.executable() == "creditsync"  # nothing beside this interpreter: the name
    installed = script(tmp_path / "bin")
    assert serve.executable() == str(installed)
    assert beside != installed
