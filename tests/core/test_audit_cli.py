"""`creditsync audit` as a user runs it: a real process, the marketplace stand-in (not Wix)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from creditsync import clock, instances, marketplace_standin
from creditsync.storage import database
from tests.support import marketplace as stand

CLI = [sys.executable, "-m", "creditsync.cli.main"]


@pytest.fixture
def running() -> Iterator[marketplace_standin.Running]:
    with stand.serving() as found:
        yield found


def audit(db_url: str, running: marketplace_standin.Running | None,
          *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CREDITSYNC_DATABASE_URL": db_url}
    env.pop("CREDITSYNC_WIX_APP_ID", None)
    if running is not None:
        env |= {"CREDITSYNC_WIX_APP_ID": stand.APP_ID, "CREDITSYNC_WIX_API_URL": running.url,
                "CREDITSYNC_APP_SECRET": stand.APP_SECRET, "CREDITSYNC_MARKETPLACE_RATE": "100"}
    return subprocess.run([*CLI, "audit", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def provision(db_url: str, *ids: str) -> None:
    engine = database.create(db_url)
    try:
        for instance_id in ids:
            instances.provision(engine, instance_id, now=clock.utcnow())
    finally:
        engine.dispose()


def test_the_source_off_says_which_variable_turns_it_on(db_url: str) -> None:
    result = audit(db_url, None, "--all")
    assert result.returncode == 2
    assert "set CREDITSYNC_WIX_APP_ID" in result.stderr


def test_a_dry_run_reports_then_the_audit_heals(
    db_url: str, running: marketplace_standin.Running,
) -> None:
    provision(db_url, "agrees", "missed")
    running.standin.set_paid("missed", "pro")
    dry = audit(db_url, running, "--all", "--dry-run", "--json")
    assert dry.returncode == 1, dry.stderr
    assert json.loads(dry.stdout) == {
        "checked": 2, "disagreed": 1, "healed": 0, "errors": 0,
        "disagreements": [{"instanceId": "missed", "ourPlan": "free", "marketplacePlan": "pro",
                           "action": "would_heal"}]}
    done = audit(db_url, running, "--all")
    assert done.returncode == 0, done.stderr
    assert "missed    free      pro          healed" in done.stdout
    assert "checked 2, disagreed 1, healed 1, errors 0" in done.stdout
    again = audit(db_url, running, "--instance", "missed", "--json")
    assert (again.returncode, json.loads(again.stdout)["disagreed"]) == (0, 0)


def test_an_instance_that_cannot_be_checked_exits_1(
    db_url: str, running: marketplace_standin.Running,
) -> None:
    provision(db_url, "x")
    running.standin.fail_with(503)
    result = audit(db_url, running, "--instance", "x", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["errors"] == 1
    table = audit(db_url, running, "--instance", "x")
    assert "not checked: x: the marketplace answered POST /oauth2/token with 503" in (
        table.stderr)
