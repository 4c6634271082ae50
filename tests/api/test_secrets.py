"""Secrets hygiene (issue 9, point 10): access logs, the settings' repr, `run --dev`'s host,
the admin token's length, and failed admin authentications in /metrics."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from creditsync import clock, config
from creditsync.cli import serve
from creditsync_api import devkeys, main, tokens
from tests.api.conftest import CLI, Api, Server, server_env, settings_for
from tests.support.database import prepare
from tests.support.postgres import free_port


def test_the_settings_repr_hides_every_secret(keys: devkeys.DevKeys) -> None:
    settings = settings_for(
        "postgresql+psycopg://creditsync:pg-password@db/creditsync", keys).replace(
        alert_webhook_url="https://hooks.slack.example/services/T0/B0/slack-secret",
        alert_smtp_url="smtp://mailer:smtp-password@mail.example:587")

    for shown in (repr(settings), str(settings), f"{settings!r}"):
        for secret in (keys.app_secret, keys.admin_token, keys.public_pem.splitlines()[1],
                       "pg-password", "slack-secret", "smtp-password"):
            assert secret not in shown
        assert "app_secret=SecretStr('**********')" in shown
        assert "postgresql+psycopg://creditsync:***@db/creditsync" in shown
        assert "batch_size=5000" in shown


@pytest.mark.parametrize("token", ["", "x", "fifteen-chars!!"])
def test_an_admin_token_shorter_than_16_characters_is_refused(
    keys: devkeys.DevKeys, token: str,
) -> None:
    settings = settings_for("sqlite://", keys).replace(admin_token=token or None)
    expected = "missing secret" if not token else (
        f"CREDITSYNC_ADMIN_TOKEN is {len(token)} characters long; use at least 16")

    with pytest.raises(config.ConfigError, match=expected):
        main.create_app(settings)


def test_a_16_character_admin_token_is_accepted(keys: devkeys.DevKeys) -> None:
    main.create_app(settings_for("sqlite://", keys).replace(admin_token="sixteen-chars!!!"))


def test_the_server_refuses_a_short_admin_token_with_a_message(
    keys: devkeys.DevKeys, tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/creditsync.db"
    prepare(url)
    env = server_env(url, keys, CREDITSYNC_ADMIN_TOKEN="changeme")

    done = subprocess.run([*CLI, "api", "--port", str(free_port())], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 1
    assert "CREDITSYNC_ADMIN_TOKEN is 8 characters long; use at least 16" in done.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.7", "example.com", ""])
def test_run_dev_refuses_a_host_other_machines_can_reach(tmp_path: Path, host: str) -> None:
    done = subprocess.run([*CLI, "run", "--dev", "--host", host, "--port", str(free_port())],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          check=False, env={k: v for k, v in os.environ.items()
                                            if not k.startswith("CREDITSYNC_")})

    assert done.returncode == 2, done.stderr
    assert "listens only on a loopback address" in done.stderr
    assert not (tmp_path / ".creditsync-dev").exists()


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True), ("0.0.0.0", False), ("::", False),
    ("10.0.0.1", False), ("localhost.example.com", False), ("", False)])
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    assert serve.is_loopback(host) is loopback


def test_the_access_log_filter_redacts_instance_tokens() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                               '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET",
                                "/billing?lang=en&instance=sig.payload&x=1", "1.1", 200), None)

    assert serve.RedactInstanceTokens().filter(record)

    assert record.getMessage() == ('127.0.0.1:5000 - "GET /billing?lang=en&instance=[redacted]'
                                   '&x=1 HTTP/1.1" 200')


def test_access_logs_of_a_real_server_hold_no_instance_token(
    keys: devkeys.DevKeys, tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/creditsync.db"
    prepare(url)
    server = Server(["api", "--access-log"], server_env(url, keys), tmp_path / "server.log")
    try:
        server.wait_ready()
        token = tokens.sign(keys.app_secret, "secrets-1", now=clock.utcnow())
        for path in ("/api/billing/credits", "/billing"):
            httpx.get(f"{server.url}{path}", params={"instance": token}, timeout=10)
    finally:
        server.stop()

    log = server.output()
    assert "instance=[redacted]" in log
    assert token not in log
    assert token.split(".")[1] not in log


def test_failed_admin_authentications_are_counted(local_api: Api) -> None:
    api = local_api
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"},
                    {"Authorization": "Bearer wrong-again"}, api.admin):
        api.http.get("/api/admin/stats", headers=headers)

    text = api.http.get("/metrics").text

    assert 'creditsync_admin_auth_failures_total{reason="missing_admin_token"} 2.0' in text
    assert 'creditsync_admin_auth_failures_total{reason="bad_admin_token"} 2.0' in text
