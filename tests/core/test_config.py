"""Settings (pydantic-settings): every value from the environment or from an explicit mapping,
bad values refused with the variable to set, secrets as `SecretStr`, one frozen object."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pydantic
import pytest

from creditsync import config, errors

TOKEN = "an-admin-token-of-32-characters!"
SECRETS = {"CREDITSYNC_WIX_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nkey\n",
           "CREDITSYNC_APP_SECRET": "app-secret", "CREDITSYNC_ADMIN_TOKEN": TOKEN}


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = config.from_env({})
    assert settings == config.Settings()
    assert settings.database_url == "sqlite:///./creditsync.db"
    assert settings.sync_interval == dt.timedelta(seconds=60)
    assert settings.usage_on_plan_change == "Reset"
    assert settings.expiry_grace_period == dt.timedelta(0)
    assert settings.batch_size == 5000
    assert settings.instance_token_max_age == dt.timedelta(hours=24)
    assert settings.alert_throttle == dt.timedelta(minutes=15)
    assert (settings.wix_public_key, settings.app_secret, settings.admin_token,
            settings.plans_file, settings.alert_webhook_url, settings.alert_smtp_url) == (
        None, None, None, None, None, None)


def test_every_variable_is_read_from_the_mapping(tmp_path: Path) -> None:
    settings = config.from_env({
        **SECRETS,
        "CREDITSYNC_DATABASE_URL": "postgresql+psycopg://u:p@db/creditsync",
        "CREDITSYNC_PLANS_FILE": str(tmp_path / "plans.yaml"),
        "CREDITSYNC_SYNC_INTERVAL": "90",
        "CREDITSYNC_USAGE_ON_PLAN_CHANGE": "Preserve",
        "CREDITSYNC_EXPIRY_GRACE_PERIOD": "2d",
        "CREDITSYNC_BATCH_SIZE": "250",
        "CREDITSYNC_INSTANCE_TOKEN_MAX_AGE": "1h30m",
        "CREDITSYNC_ALERT_WEBHOOK_URL": "https://hooks.example/T0/secret",
        "CREDITSYNC_ALERT_SMTP_URL": "smtp://u:pw@mail:25?from=a@x&to=b@x",
        "CREDITSYNC_ALERT_THROTTLE": "5m",
        "CREDITSYNC_KUBE_APISERVER": "not a setting: ignored",
        "HOME": "/root",
    })
    assert settings.database_url == "postgresql+psycopg://u:p@db/creditsync"
    assert settings.plans_file == tmp_path / "plans.yaml"
    assert settings.sync_interval == dt.timedelta(seconds=90)
    assert settings.usage_on_plan_change == "Preserve"
    assert settings.expiry_grace_period == dt.timedelta(days=2)
    assert settings.batch_size == 250
    assert settings.instance_token_max_age == dt.timedelta(hours=1, minutes=30)
    assert settings.alert_throttle == dt.timedelta(minutes=5)
    assert settings.alert_webhook_url is not None
    assert settings.alert_webhook_url.get_secret_value() == "https://hooks.example/T0/secret"
    assert settings.alert_smtp_url is not None
    assert settings.alert_smtp_url.get_secret_value() == "smtp://u:pw@mail:25?from=a@x&to=b@x"


def test_secrets_are_secret_strings() -> None:
    settings = config.from_env(SECRETS)
    for name in ("wix_public_key", "app_secret", "admin_token"):
        assert isinstance(getattr(settings, name), pydantic.SecretStr), name
    assert settings.app_secret is not None
    assert settings.app_secret.get_secret_value() == "app-secret"
    assert config.Settings(app_secret="given").app_secret == pydantic.SecretStr("given")


def test_the_repr_hides_secrets_and_the_database_password() -> None:
    settings = config.from_env({
        **SECRETS, "CREDITSYNC_DATABASE_URL": "postgresql+psycopg://creditsync:pg-pw@db/cs",
        "CREDITSYNC_ALERT_WEBHOOK_URL": "https://hooks.example/T0/slack-secret"})
    for shown in (repr(settings), str(settings)):
        for secret in ("app-secret", TOKEN, "BEGIN PUBLIC KEY", "pg-pw", "slack-secret"):
            assert secret not in shown
        assert "app_secret=SecretStr('**********')" in shown
        assert "'postgresql+psycopg://creditsync:***@db/cs'" in shown
        assert "batch_size=5000" in shown


def test_an_empty_variable_counts_as_unset() -> None:
    settings = config.from_env({"CREDITSYNC_APP_SECRET": "", "CREDITSYNC_DATABASE_URL": "",
                                "CREDITSYNC_BATCH_SIZE": ""})
    assert settings.app_secret is None
    assert settings.database_url == config.DEFAULT_DATABASE_URL
    assert settings.batch_size == 5000


def test_without_a_mapping_the_process_environment_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CREDITSYNC_BATCH_SIZE", "7")
    assert config.from_env().batch_size == 7
    assert config.from_env({}).batch_size == 5000
    assert config.Settings().batch_size == 5000  # a value, never read from the environment


def test_the_public_key_can_come_from_a_file(tmp_path: Path) -> None:
    key = tmp_path / "wix.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\nfrom-file\n")
    settings = config.from_env({"CREDITSYNC_WIX_PUBLIC_KEY_FILE": str(key)})
    assert settings.wix_public_key is not None
    assert settings.wix_public_key.get_secret_value() == key.read_text()
    both = config.from_env({"CREDITSYNC_WIX_PUBLIC_KEY": "inline",
                            "CREDITSYNC_WIX_PUBLIC_KEY_FILE": str(key)})
    assert both.wix_public_key == pydantic.SecretStr("inline")

    missing = tmp_path / "nope.pem"
    with pytest.raises(errors.ConfigError, match=(
            f"^CREDITSYNC_WIX_PUBLIC_KEY_FILE={missing} cannot be read "
            r"\(No such file or directory\)$")):
        config.from_env({"CREDITSYNC_WIX_PUBLIC_KEY_FILE": str(missing)})


@pytest.mark.parametrize(("name", "value", "message"), [
    ("CREDITSYNC_USAGE_ON_PLAN_CHANGE", "reset",
     "CREDITSYNC_USAGE_ON_PLAN_CHANGE='reset': use one of Reset, Preserve"),
    ("CREDITSYNC_BATCH_SIZE", "0", "CREDITSYNC_BATCH_SIZE='0': use a positive integer"),
    ("CREDITSYNC_BATCH_SIZE", "ten", "CREDITSYNC_BATCH_SIZE='ten': use a positive integer"),
    ("CREDITSYNC_SYNC_INTERVAL", "5 minutes",
     "CREDITSYNC_SYNC_INTERVAL: '5 minutes' is not a duration: use e.g. 60s, 5m, 6h, 1h30m or 2d"),
    ("CREDITSYNC_EXPIRY_GRACE_PERIOD", "soon",
     "CREDITSYNC_EXPIRY_GRACE_PERIOD: 'soon' is not a duration"),
    ("CREDITSYNC_INSTANCE_TOKEN_MAX_AGE", "-1h",
     "CREDITSYNC_INSTANCE_TOKEN_MAX_AGE: '-1h' is not a duration"),
    ("CREDITSYNC_ALERT_THROTTLE", "1w", "CREDITSYNC_ALERT_THROTTLE: '1w' is not a duration"),
])
def test_a_bad_value_names_the_variable_to_set(name: str, value: str, message: str) -> None:
    with pytest.raises(errors.ConfigError) as raised:
        config.from_env({name: value})
    assert str(raised.value).startswith(message)
    assert raised.value.code == "misconfigured"


def test_values_given_directly_are_validated_too() -> None:
    with pytest.raises(errors.ConfigError, match=r"^CREDITSYNC_BATCH_SIZE=0: use a positive"):
        config.Settings(batch_size=0)
    with pytest.raises(errors.ConfigError, match="CREDITSYNC_SYNC_INTERVAL: 'often' is not a"):
        config.Settings(sync_interval="often")
    assert config.Settings(sync_interval="1h30m").sync_interval == dt.timedelta(minutes=90)
    assert config.Settings(sync_interval=dt.timedelta(seconds=5)).sync_interval.seconds == 5


def test_an_unknown_setting_is_refused() -> None:
    with pytest.raises(errors.ConfigError, match="extra"):
        config.Settings(extra={"A": "b"})  # the old, unused `extra` field is gone
    assert "extra" not in config.Settings.model_fields


def test_settings_are_one_frozen_value_and_replace_validates() -> None:
    settings = config.from_env(SECRETS)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.batch_size = 1  # type: ignore[misc]
    assert hash(settings) == hash(config.from_env(SECRETS))

    changed = settings.replace(admin_token="sixteen-chars!!!", batch_size="10")
    assert changed.admin_token == pydantic.SecretStr("sixteen-chars!!!")
    assert changed.batch_size == 10
    assert changed.app_secret == settings.app_secret
    assert settings.batch_size == 5000
    with pytest.raises(errors.ConfigError, match="CREDITSYNC_BATCH_SIZE"):
        settings.replace(batch_size=-1)


def test_servers_need_every_secret_and_a_long_admin_token() -> None:
    config.from_env(SECRETS).require_secrets()
    with pytest.raises(errors.ConfigError) as missing:
        config.from_env({}).require_secrets()
    assert str(missing.value) == (
        "missing secret(s): set CREDITSYNC_WIX_PUBLIC_KEY (or _FILE), CREDITSYNC_APP_SECRET, "
        "CREDITSYNC_ADMIN_TOKEN (for a local try, `creditsync run --dev` makes development keys)")
    with pytest.raises(errors.ConfigError, match=r"^missing secret.*: set CREDITSYNC_APP_SECRET "):
        config.from_env({**SECRETS, "CREDITSYNC_APP_SECRET": ""}).require_secrets()
    with pytest.raises(errors.ConfigError, match=(
            r"^CREDITSYNC_ADMIN_TOKEN is 15 characters long; use at least 16")):
        config.from_env({**SECRETS, "CREDITSYNC_ADMIN_TOKEN": "fifteen-chars!!"}
                        ).require_secrets()


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90s", 90), ("5m", 300), ("6h", 21600), ("1h30m", 5400), ("2d", 172800),
    ("0s", 0)])
def test_durations(text: str, seconds: int) -> None:
    assert config.parse_duration(text) == dt.timedelta(seconds=seconds)
    assert config.parse_duration(config.format_duration(dt.timedelta(seconds=seconds))) == (
        dt.timedelta(seconds=seconds))


def test_settings_handed_to_worker_processes_read_back_the_same() -> None:
    """`creditsync api --workers N` hands its settings to each worker as the environment:
    every value, the non-default ones included, must read back unchanged."""
    settings = config.from_env({
        **SECRETS,
        "CREDITSYNC_LOW_CREDIT_THRESHOLDS": "50%,2.5%",
        "CREDITSYNC_APP_WEBHOOK_URL": "https://app.example.com/hooks",
        "CREDITSYNC_APP_WEBHOOK_SECRET": "whsec_" + "QUJD" * 8,
        "CREDITSYNC_FULL_SCAN_INTERVAL": "2h",
        "CREDITSYNC_SYNC_INTERVAL": "90",
        "CREDITSYNC_USAGE_ON_PLAN_CHANGE": "Preserve",
    })
    assert settings.low_credit_thresholds == (5000, 250)
    assert config.from_env(config.to_env(settings)) == settings
    assert config.from_env(config.to_env(config.Settings())) == config.Settings()
