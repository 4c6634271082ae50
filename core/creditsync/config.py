"""Configuration from the environment: one frozen object, read once per process.

`Settings` is a pydantic-settings model with the prefix `CREDITSYNC_`; `from_env()` reads
the process environment, or any mapping given to it, through pydantic-settings' own
environment source. Built directly, `Settings(...)` holds exactly what it is given (and the
defaults): it never reads the environment by itself. A bad value raises `ConfigError`
naming the variable to set. Secrets are `SecretStr`: read them with `.get_secret_value()`.

Only the servers (`run`, `api`, `operator`) need secrets; they call `require_secrets()`,
which fails closed with a message naming the variable to set.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import pydantic
import pydantic_settings
from pydantic import AfterValidator, BeforeValidator, SecretStr, ValidationInfo

from creditsync import enums, errors, thresholds

PREFIX = "CREDITSYNC_"
DEFAULT_DATABASE_URL = "sqlite:///./creditsync.db"
USAGE_POLICIES = tuple(policy.value for policy in enums.UsagePolicy)
MIN_ADMIN_TOKEN = 16  # characters; `openssl rand -hex 32` makes 64
PUBLIC_KEY_FILE = "CREDITSYNC_WIX_PUBLIC_KEY_FILE"
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


ConfigError = errors.ConfigError


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> dt.timedelta:
    """Parse `90`, `90s`, `5m`, `6h`, `1h30m` or `2d` into a timedelta."""
    text = text.strip()
    if text.isdigit():
        return dt.timedelta(seconds=int(text))
    match = _DURATION.match(text)
    if not text or match is None:
        raise ConfigError(f"{text!r} is not a duration: use e.g. 60s, 5m, 6h, 1h30m or 2d")
    days, hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    return dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def format_duration(delta: dt.timedelta) -> str:
    """`delta` as `parse_duration` reads it: `0s`, `90s` → `1m30s`, `1h30m`, `2d`."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def to_env(settings: Settings) -> dict[str, str]:
    """`settings` as the environment `from_env` reads back (what worker processes get)."""
    out: dict[str, str] = {}
    for name, value in dict(settings).items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, dt.timedelta):
            value = format_duration(value)
        elif name == "low_credit_thresholds":  # basis points, written as percentages
            value = thresholds.text_of(value)
        out[variable(name)] = str(value)
    return out


def variable(field_name: str) -> str:
    """The environment variable that sets `field_name`."""
    return PREFIX + field_name.upper()


# Validators raise ValueError (pydantic collects those) with the whole message;
# `Settings.__init__` turns the collected errors into one ConfigError.

def _duration(value: object, info: ValidationInfo) -> object:
    if not isinstance(value, str):
        return value  # a timedelta, or what pydantic makes of it
    try:
        return parse_duration(value)
    except ConfigError as exc:
        raise ValueError(f"{variable(str(info.field_name))}: {exc}") from None


def _positive_integer(value: object, info: ValidationInfo) -> object:
    number = int(value) if isinstance(value, str) and value.isdigit() else value
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ValueError(f"{variable(str(info.field_name))}={value!r}: use a positive integer")
    return number


def _positive_number(value: object, info: ValidationInfo) -> object:
    try:
        number = float(value) if isinstance(value, str | int | float) else -1.0
    except ValueError:
        number = -1.0
    if not number > 0 or number != number or number == float("inf"):
        raise ValueError(f"{variable(str(info.field_name))}={value!r}: use a positive number "
                         "(requests per second)")
    return number


def _usage_policy(value: object, info: ValidationInfo) -> object:
    if value not in USAGE_POLICIES:
        raise ValueError(f"{variable(str(info.field_name))}={value!r}: use one of "
                         + ", ".join(USAGE_POLICIES))
    return str(value)


def _low_credit_thresholds(value: object, info: ValidationInfo) -> object:
    if not isinstance(value, str):
        return value  # a tuple of basis points, as `Settings(...)` may be given
    try:
        return thresholds.parse(value, where=variable(str(info.field_name)))
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


_WEBHOOK_SECRET = re.compile(r"^whsec_([A-Za-z0-9+/]+={0,2})$")
MIN_WEBHOOK_SECRET_BYTES = 24  # the Standard Webhooks specification: 24 to 64 bytes


def webhook_secret_bytes(secret: str) -> bytes:
    """The key of a `whsec_<base64>` secret; raises `ConfigError` saying what is wrong."""
    where = "CREDITSYNC_APP_WEBHOOK_SECRET"
    match = _WEBHOOK_SECRET.match(secret.strip())
    if match is None:
        raise ConfigError(f"{where}: use whsec_ followed by base64 (e.g. `echo whsec_$(openssl "
                          "rand -base64 32)`)")
    body = match.group(1)
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except binascii.Error as exc:
        raise ConfigError(f"{where}: the part after whsec_ is not base64 ({exc})") from None
    if not MIN_WEBHOOK_SECRET_BYTES <= len(key) <= 64:
        raise ConfigError(f"{where}: the key is {len(key)} bytes; use 24 to 64 (e.g. `echo "
                          "whsec_$(openssl rand -base64 32)`)")
    return key


def _webhook_secret(value: object, info: ValidationInfo) -> object:
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(text, str):
        try:
            webhook_secret_bytes(text)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return value


def _http_url(value: object, info: ValidationInfo) -> object:
    if isinstance(value, str) and not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"{variable(str(info.field_name))}={value!r}: use an http:// or "
                         "https:// URL")
    return value


def _positive_duration(value: dt.timedelta, info: ValidationInfo) -> dt.timedelta:
    if value <= dt.timedelta(0):
        raise ValueError(f"{variable(str(info.field_name))}: use a duration above 0, e.g. 1h")
    return value


Duration = Annotated[dt.timedelta, BeforeValidator(_duration)]
PositiveDuration = Annotated[dt.timedelta, BeforeValidator(_duration),
                             AfterValidator(_positive_duration)]


class Settings(pydantic_settings.BaseSettings):
    """Everything a creditsync process reads from its environment."""

    model_config = pydantic_settings.SettingsConfigDict(
        env_prefix=PREFIX, env_ignore_empty=True, frozen=True, extra="forbid")

    database_url: str = DEFAULT_DATABASE_URL
    wix_public_key: SecretStr | None = None  # or a file: CREDITSYNC_WIX_PUBLIC_KEY_FILE
    app_secret: SecretStr | None = None
    admin_token: SecretStr | None = None
    plans_file: Path | None = None
    sync_interval: Duration = dt.timedelta(seconds=60)  # the incremental tick
    full_scan_interval: PositiveDuration = dt.timedelta(hours=1)  # the full scan that audits ticks
    usage_on_plan_change: Annotated[str, BeforeValidator(_usage_policy)] = "Reset"
    expiry_grace_period: Duration = dt.timedelta(hours=0)
    batch_size: Annotated[int, BeforeValidator(_positive_integer)] = 5000
    instance_token_max_age: Duration = dt.timedelta(hours=24)
    alert_webhook_url: SecretStr | None = None  # may carry a token in its path
    alert_smtp_url: SecretStr | None = None  # may carry a password
    alert_throttle: Duration = dt.timedelta(minutes=15)
    # the marketplace as a second source of desired state: on when the app id is set
    wix_app_id: str | None = None  # the OAuth client id; the secret is `app_secret`
    wix_api_url: str = "https://www.wixapis.com"
    marketplace_audit_interval: Duration = dt.timedelta(hours=6)  # 0: no periodic audit
    marketplace_rate: Annotated[float, BeforeValidator(_positive_number)] = 5.0
    # events to the app (Standard Webhooks): delivered only when the URL is set
    app_webhook_url: Annotated[str | None, BeforeValidator(_http_url)] = None
    app_webhook_secret: Annotated[SecretStr | None, BeforeValidator(_webhook_secret)] = None
    # NoDecode: the environment's text goes to the validator, not to a JSON decoder
    low_credit_thresholds: Annotated[tuple[int, ...], pydantic_settings.NoDecode,
                                     BeforeValidator(_low_credit_thresholds)] = thresholds.DEFAULT

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except pydantic.ValidationError as exc:
            raise ConfigError("; ".join(_explain(exc))) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[pydantic_settings.BaseSettings],
        init_settings: pydantic_settings.PydanticBaseSettingsSource,
        env_settings: pydantic_settings.PydanticBaseSettingsSource,
        dotenv_settings: pydantic_settings.PydanticBaseSettingsSource,
        file_secret_settings: pydantic_settings.PydanticBaseSettingsSource,
    ) -> tuple[pydantic_settings.PydanticBaseSettingsSource, ...]:
        """The given values only: the environment comes in through `from_env`."""
        return (init_settings,)

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes`, validated like any other value."""
        return type(self)(**{**dict(self), **changes})

    def require_secrets(self) -> None:
        """Fail closed when a server would run without one of its secrets."""
        missing = [
            name
            for name, value in (
                ("CREDITSYNC_WIX_PUBLIC_KEY (or _FILE)", self.wix_public_key),
                ("CREDITSYNC_APP_SECRET", self.app_secret),
                ("CREDITSYNC_ADMIN_TOKEN", self.admin_token),
            )
            if value is None or not value.get_secret_value()
        ]
        if missing:
            raise ConfigError(
                "missing secret(s): set " + ", ".join(missing)
                + " (for a local try, `creditsync run --dev` makes development keys)"
            )
        if self.app_webhook_url and (self.app_webhook_secret is None
                                     or not self.app_webhook_secret.get_secret_value()):
            raise ConfigError("CREDITSYNC_APP_WEBHOOK_URL is set but CREDITSYNC_APP_WEBHOOK_SECRET "
                              "is not: events to the app are signed (e.g. `echo whsec_$(openssl "
                              "rand -base64 32)`)")
        assert self.admin_token is not None
        if len(self.admin_token.get_secret_value()) < MIN_ADMIN_TOKEN:
            raise ConfigError(
                f"CREDITSYNC_ADMIN_TOKEN is {len(self.admin_token.get_secret_value())} "
                f"characters long; use at least {MIN_ADMIN_TOKEN} (e.g. `openssl rand -hex 32`)"
            )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """pydantic's repr (secrets shown as '**********'), with the database password hidden."""
        for name, value in super().__repr_args__():
            if name == "database_url" and isinstance(value, str):
                value = _URL_PASSWORD.sub(r"\1***@", value)
            yield name, value


class _Environment(pydantic_settings.EnvSettingsSource):
    """pydantic-settings' environment source, reading `env` instead of `os.environ`."""

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__(Settings)
        # as the source normalises os.environ: names case-insensitive, empty values unset
        self.env_vars = {name.lower(): value for name, value in env.items() if value}


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from `env` (default: `os.environ`)."""
    env = dict(os.environ if env is None else env)
    if not env.get("CREDITSYNC_WIX_PUBLIC_KEY") and env.get(PUBLIC_KEY_FILE):
        env["CREDITSYNC_WIX_PUBLIC_KEY"] = _read_key(env[PUBLIC_KEY_FILE])
    return Settings(**_Environment(env)())


def _read_key(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{PUBLIC_KEY_FILE}={path} cannot be read ({exc.strerror})") from exc


def _explain(exc: pydantic.ValidationError) -> Iterator[str]:
    """Each error as `CREDITSYNC_X=<value>: <what to do>` (a validator's message as it is)."""
    for error in exc.errors():
        cause = error.get("ctx", {}).get("error")
        if error["type"] == "value_error" and cause is not None:
            yield str(cause)
        elif error["type"] == "extra_forbidden":
            yield f"{error['loc'][0]}: not a setting ({error['msg'].lower()})"
        else:
            name = variable(str(error["loc"][0])) if error["loc"] else PREFIX + "*"
            yield f"{name}={error['input']!r}: {error['msg']}"
