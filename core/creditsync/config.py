"""Configuration from the environment: one frozen object, read once per process.

Only the servers (`run`, `api`, `operator`) need secrets; they call `require_secrets()`,
which fails closed with a message naming the variable to set.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from creditsync import enums, errors

DEFAULT_DATABASE_URL = "sqlite:///./creditsync.db"
USAGE_POLICIES = tuple(policy.value for policy in enums.UsagePolicy)
MIN_ADMIN_TOKEN = 16  # characters; `openssl rand -hex 32` makes 64
# shown as '***' by `Settings.__repr__`: secrets (and any field named like one added later),
# and URLs that carry credentials
_HIDDEN = frozenset({"wix_public_key", "app_secret", "admin_token", "alert_webhook_url",
                     "alert_smtp_url"})
_HIDDEN_SUFFIXES = ("_secret", "_token", "_key", "_password")
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


@dataclass(frozen=True)
class Settings:
    """Everything a creditsync process reads from its environment."""

    database_url: str = DEFAULT_DATABASE_URL
    wix_public_key: str | None = None
    app_secret: str | None = None
    admin_token: str | None = None
    plans_file: Path | None = None
    sync_interval: dt.timedelta = dt.timedelta(seconds=60)
    usage_on_plan_change: str = "Reset"
    expiry_grace_period: dt.timedelta = dt.timedelta(hours=0)
    batch_size: int = 5000
    instance_token_max_age: dt.timedelta = dt.timedelta(hours=24)
    alert_webhook_url: str | None = None
    alert_smtp_url: str | None = None
    alert_throttle: dt.timedelta = dt.timedelta(minutes=15)
    extra: Mapping[str, str] = field(default_factory=dict)

    def require_secrets(self) -> None:
        """Fail closed when a server would run without one of its secrets."""
        missing = [
            name
            for name, value in (
                ("CREDITSYNC_WIX_PUBLIC_KEY (or _FILE)", self.wix_public_key),
                ("CREDITSYNC_APP_SECRET", self.app_secret),
                ("CREDITSYNC_ADMIN_TOKEN", self.admin_token),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                "missing secret(s): set " + ", ".join(missing)
                + " (for a local try, `creditsync run --dev` makes development keys)"
            )
        if self.admin_token is not None and len(self.admin_token) < MIN_ADMIN_TOKEN:
            raise ConfigError(
                f"CREDITSYNC_ADMIN_TOKEN is {len(self.admin_token)} characters long; use at "
                f"least {MIN_ADMIN_TOKEN} (e.g. `openssl rand -hex 32`)"
            )

    def __repr__(self) -> str:
        """Every field, with secrets as '***' and the database URL's password hidden."""
        shown = []
        for name in (f.name for f in dataclasses.fields(self)):
            value = getattr(self, name)
            if value is not None and (name in _HIDDEN or name.endswith(_HIDDEN_SUFFIXES)):
                value = "***"
            elif name == "database_url":
                value = _URL_PASSWORD.sub(r"\1***@", value)
            elif name == "extra":
                value = sorted(value)  # the names only
            shown.append(f"{name}={value!r}")
        return f"Settings({', '.join(shown)})"


def _read_key(env: Mapping[str, str]) -> str | None:
    if env.get("CREDITSYNC_WIX_PUBLIC_KEY"):
        return env["CREDITSYNC_WIX_PUBLIC_KEY"]
    path = env.get("CREDITSYNC_WIX_PUBLIC_KEY_FILE")
    if not path:
        return None
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(
            f"CREDITSYNC_WIX_PUBLIC_KEY_FILE={path} cannot be read ({exc.strerror})"
        ) from exc


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from `env` (default: `os.environ`)."""
    env = os.environ if env is None else env
    policy = env.get("CREDITSYNC_USAGE_ON_PLAN_CHANGE", "Reset")
    if policy not in USAGE_POLICIES:
        raise ConfigError(
            f"CREDITSYNC_USAGE_ON_PLAN_CHANGE={policy!r}: use one of {', '.join(USAGE_POLICIES)}"
        )
    batch = env.get("CREDITSYNC_BATCH_SIZE", "5000")
    if not batch.isdigit() or int(batch) < 1:
        raise ConfigError(f"CREDITSYNC_BATCH_SIZE={batch!r}: use a positive integer")

    def duration(name: str, default: str) -> dt.timedelta:
        try:
            return parse_duration(env.get(name, default))
        except ConfigError as exc:
            raise ConfigError(f"{name}: {exc}") from exc

    plans_file = env.get("CREDITSYNC_PLANS_FILE")
    return Settings(
        database_url=env.get("CREDITSYNC_DATABASE_URL", DEFAULT_DATABASE_URL),
        wix_public_key=_read_key(env),
        app_secret=env.get("CREDITSYNC_APP_SECRET") or None,
        admin_token=env.get("CREDITSYNC_ADMIN_TOKEN") or None,
        plans_file=Path(plans_file) if plans_file else None,
        sync_interval=duration("CREDITSYNC_SYNC_INTERVAL", "60s"),
        usage_on_plan_change=policy,
        expiry_grace_period=duration("CREDITSYNC_EXPIRY_GRACE_PERIOD", "0s"),
        batch_size=int(batch),
        instance_token_max_age=duration("CREDITSYNC_INSTANCE_TOKEN_MAX_AGE", "24h"),
        alert_webhook_url=env.get("CREDITSYNC_ALERT_WEBHOOK_URL") or None,
        alert_smtp_url=env.get("CREDITSYNC_ALERT_SMTP_URL") or None,
        alert_throttle=duration("CREDITSYNC_ALERT_THROTTLE", "15m"),
    )
