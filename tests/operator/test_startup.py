"""Start-up refuses an outdated schema and builds the shared engine into memo."""

from __future__ import annotations

import asyncio
from pathlib import Path

import kopf
import pytest

from creditsync.storage import database, schema
from creditsync_operator import startup, state


def run_startup(memo: kopf.Memo) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    asyncio.run(startup.startup(settings=settings, memo=memo))
    return settings


def test_an_outdated_schema_stops_the_operator_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDITSYNC_DATABASE_URL", f"sqlite:///{tmp_path}/empty.db")
    with pytest.raises(kopf.PermanentError, match="run `creditsync db upgrade`"):
        run_startup(kopf.Memo())


def test_a_current_schema_gives_every_handler_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/current.db"
    engine = database.create(url)
    schema.upgrade(engine)
    engine.dispose()
    monkeypatch.setenv("CREDITSYNC_DATABASE_URL", url)
    monkeypatch.delenv("CREDITSYNC_ALERT_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("CREDITSYNC_ALERT_SMTP_URL", raising=False)
    memo = kopf.Memo()
    settings = run_startup(memo)
    shared = state.shared(memo)
    try:
        assert str(shared.engine.url) == url
        assert shared.executor is settings.execution.executor
        assert shared.alerter is None
        assert settings.persistence.finalizer == "creditsync.io/finalizer"
    finally:
        asyncio.run(startup.cleanup(memo=memo))


def test_a_bad_alert_url_stops_the_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDITSYNC_DATABASE_URL", f"sqlite:///{tmp_path}/x.db")
    monkeypatch.setenv("CREDITSYNC_ALERT_SMTP_URL", "smtp://mail.example.test")
    with pytest.raises(kopf.PermanentError, match="CREDITSYNC_ALERT_SMTP_URL"):
        run_startup(kopf.Memo())
