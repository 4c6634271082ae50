"""The `creditsync` command as a user runs it: a real process, real databases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "creditsync.cli.main"]


def run(url: str, *args: str, check: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "CREDITSYNC_DATABASE_URL": url, **env},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}: {result.stderr}")
    return result


def test_seed_check_sync_check(db_url: str) -> None:
    seeded = run(db_url, "dev", "seed", "--instances", "250", "--drifted", "10", check=True)
    assert "seeded 250 instances (25 drifted)" in seeded.stdout
    report = run(db_url, "check", "--json")
    assert report.returncode == 1
    document = json.loads(report.stdout)
    assert document["scanned"] == 250
    assert len(document["drifted"]) == 25
    stuck = next(d for d in document["drifted"] if d["desiredPlan"] != "free")
    assert stuck["actualPlan"] == "free"
    assert stuck["actualCreditsTotal"] == 100
    assert stuck["desiredCreditsTotal"] in (1000, 5000, 25000)
    assert stuck["reason"] == "drift_repair"
    table = run(db_url, "check")
    assert table.returncode == 1
    assert "DESIRED PLAN" in table.stdout
    assert "25 drifted; run `creditsync sync --all` to repair" in table.stderr

    dry = run(db_url, "sync", "--all", "--dry-run", check=True)
    assert "would repair 25" in dry.stdout
    assert "free → " in dry.stdout
    assert run(db_url, "check").returncode == 1
    done = run(db_url, "--log-json", "sync", "--all", check=True)
    assert "repaired 25, failed 0" in done.stdout
    repair_logs = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert sum("credits (plan" in entry["message"] for entry in repair_logs) == 25
    assert any(entry["message"].startswith("sync cli: scanned 250") for entry in repair_logs)
    assert run(db_url, "check").returncode == 0


def test_plans_apply_validates_and_converges(db_url: str, tmp_path: Path) -> None:
    run(db_url, "dev", "seed", "--instances", "40", "--drifted", "0", check=True)
    bad = tmp_path / "bad.yaml"
    bad.write_text("plans:\n  - {id: free, monthlyCredits: -1, default: true}\n")
    refused = run(db_url, "plans", "apply", str(bad))
    assert refused.returncode == 1
    assert "plan free: monthlyCredits is -1; it must be >= 0 (nothing was changed)" in (
        refused.stderr)
    good = tmp_path / "plans.yaml"
    good.write_text("plans:\n  - {id: free, monthlyCredits: 100, default: true}\n"
                    "  - {id: starter, monthlyCredits: 1000}\n"
                    "  - {id: pro, monthlyCredits: 6000, aliases: [pro-monthly]}\n"
                    "  - {id: scale, monthlyCredits: 25000}\n")
    applied = run(db_url, "plans", "apply", str(good), check=True)
    assert "catalog: changed free, pro, scale, starter" in applied.stdout  # displayName dropped
    assert "repaired 4 of 40" in applied.stdout
    listing = json.loads(run(db_url, "plans", "list", "--json", check=True).stdout)
    pro = next(p for p in listing["plans"] if p["id"] == "pro")
    assert pro == {"id": "pro", "monthlyCredits": 6000, "aliases": ["pro-monthly"],
                   "instances": 4}


def test_sync_needs_a_scope_and_a_current_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    usage = run(url, "sync")
    assert usage.returncode == 2
    assert "--all, or --instance ID" in usage.stderr
    outdated = run(url, "check")
    assert outdated.returncode == 1
    assert "run `creditsync db upgrade`" in outdated.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_run_converges_a_seeded_database_at_start_up(db_url: str) -> None:
    run(db_url, "dev", "seed", "--instances", "300", "--drifted", "20", check=True)
    with subprocess.Popen(
        [*CLI, "--log-json", "run", "--no-api"], stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CREDITSYNC_DATABASE_URL": db_url, "CREDITSYNC_SYNC_INTERVAL": "1h"},
    ) as process:
        try:
            assert process.stderr is not None
            deadline = time.monotonic() + 60
            line = ""
            while time.monotonic() < deadline and "sync startup" not in line:
                line = process.stderr.readline()
            assert "sync startup: scanned 300, drifted 60, repaired 60, failed 0" in line
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    assert process.returncode == 0
    assert run(db_url, "check").returncode == 0


def test_an_unreadable_plans_file_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    missing = tmp_path / "nope.yaml"
    result = run(url, "db", "upgrade", CREDITSYNC_PLANS_FILE=str(missing))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"CREDITSYNC_PLANS_FILE: {missing}: cannot be read (No such file or directory)" in (
        result.stderr)


def test_plans_apply_converges_even_when_the_catalog_is_unchanged(
    db_url: str, tmp_path: Path
) -> None:
    run(db_url, "dev", "seed", "--instances", "30", "--drifted", "0", check=True)
    doubled = tmp_path / "doubled.yaml"
    doubled.write_text("plans:\n  - {id: free, monthlyCredits: 200, default: true}\n"
                       "  - {id: starter, monthlyCredits: 2000}\n"
                       "  - {id: pro, monthlyCredits: 10000}\n"
                       "  - {id: scale, monthlyCredits: 50000}\n")
    held = run(db_url, "plans", "apply", str(doubled), "--no-sync", check=True)
    assert "not converged (--no-sync)" in held.stdout
    assert run(db_url, "check").returncode == 1  # every instance drifted against the file
    again = run(db_url, "plans", "apply", str(doubled), check=True)
    assert "catalog unchanged" in again.stdout
    assert "converged: repaired 30 of 30 instances" in again.stdout
    assert run(db_url, "check").returncode == 0


def test_policy_show_says_what_is_stored_and_where_it_came_from(db_url: str) -> None:
    shown = json.loads(run(db_url, "policy", "show", "--json", check=True).stdout)
    assert shown == {"usageOnPlanChange": "Reset", "expiryGracePeriod": "0s",
                     "expiryGracePeriodSeconds": 0, "lowCreditThresholds": "20%,5%",
                     "source": "built-in defaults (nothing stored yet)", "updatedAt": None}
    table = run(db_url, "policy", "show", check=True).stdout
    assert "usageOnPlanChange    Reset" in table
    assert "lowCreditThresholds  20%,5%" in table
    assert "source               built-in defaults (nothing stored yet)" in table
