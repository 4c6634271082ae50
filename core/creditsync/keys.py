"""Service keys: how an app's own backend authenticates (`Authorization: Bearer csk_…`).

A key is `csk_<id>_<secret>`, printed once at creation. Only the SHA-256 of the secret is
stored: the secret is 256 random bits (`secrets.token_urlsafe(32)`), so no slow password
KDF is needed: nobody can brute-force a 256-bit preimage, however fast the hash. The key is
looked up by its id on every request and compared in constant time, so a revoke is refused
at once by every replica. The last use is recorded at most once a minute per key (a guarded
update), not written on every request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import enums, errors
from creditsync.storage import database, models

_k = models.SERVICE_KEYS

PREFIX = "csk_"
LAST_USED_EVERY = dt.timedelta(minutes=1)
_SHAPE = re.compile(r"^csk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
Scope = enums.Scope


@dataclass(frozen=True)
class ServiceKey:
    id: str
    name: str
    scopes: frozenset[Scope]
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


@dataclass(frozen=True)
class Created:
    """A new key: `key` is shown this once, never stored."""

    id: str
    key: str
    name: str
    scopes: tuple[Scope, ...]


class BadKey(errors.CreditsyncError):
    """A service key that is malformed, unknown, or revoked (401)."""

    code = "bad_service_key"


class UnknownKey(errors.NotFound):
    code = "service_key_not_found"

    def __init__(self, key_id: str) -> None:
        super().__init__(f"service key {key_id} does not exist: `creditsync keys list` "
                         "shows the ids")


def parse_scopes(scopes: Iterable[str]) -> tuple[Scope, ...]:
    """Known scopes, in a stable order; `InvalidRequest` naming an unknown one."""
    out: list[Scope] = []
    for raw in scopes:
        name = raw.strip()
        if not name:
            continue
        try:
            out.append(Scope(name))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise errors.InvalidRequest(f"unknown scope {name!r}: use {known}",
                                        code="invalid_scope") from None
    if not out:
        raise errors.InvalidRequest("a key needs at least one scope: "
                                    + ", ".join(s.value for s in Scope), code="invalid_scope")
    return tuple(s for s in Scope if s in out)


def create(engine: Engine, name: str, scopes: Iterable[str], *, now: dt.datetime) -> Created:
    name = name.strip()
    if not name or len(name) > 200 or "\x00" in name:
        raise errors.InvalidRequest("a key needs a name (1 to 200 characters) saying who "
                                    "uses it", code="invalid_key_name")
    granted = parse_scopes(scopes)
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    with database.write(engine) as conn:
        conn.execute(_k.insert().values(
            id=key_id, name=name, scopes=[s.value for s in granted],
            secret_hash=_digest(secret), created_at=now, last_used_at=None, revoked_at=None))
    return Created(key_id, f"{PREFIX}{key_id}_{secret}", name, granted)


def list_keys(engine: Engine) -> list[ServiceKey]:
    """Every key, newest first (revoked ones too)."""
    with database.read(engine) as conn:
        rows = conn.execute(sa.select(_k).order_by(_k.c.created_at.desc(), _k.c.id)).all()
    return [_of(row) for row in rows]


def revoke(engine: Engine, key_id: str, *, now: dt.datetime) -> ServiceKey:
    """Revoke a key (again: no change); it is refused from the next request on."""
    with database.write(engine) as conn:
        conn.execute(_k.update().where(_k.c.id == key_id, _k.c.revoked_at.is_(None))
                     .values(revoked_at=now))
        row = conn.execute(sa.select(_k).where(_k.c.id == key_id)).first()
    if row is None:
        raise UnknownKey(key_id)
    return _of(row)


def looks_like_key(raw: str) -> bool:
    return raw.startswith(PREFIX)


_BY_ID = sa.select(_k).where(_k.c.id == sa.bindparam("key_id"))  # every request: built once


def authenticate(engine: Engine, raw: str, *, now: dt.datetime) -> ServiceKey:
    """The key `raw` names, if its secret matches and it is not revoked; else `BadKey`."""
    match = _SHAPE.match(raw)
    if match is None:
        raise BadKey("malformed service key: send `Authorization: Bearer csk_<id>_<secret>` "
                     "exactly as `creditsync keys create` printed it")
    key_id, secret = match.groups()
    with database.read_once(engine) as conn:
        row = conn.execute(_BY_ID, {"key_id": key_id}).first()
    # an unknown id is compared against a dummy digest, so both answers take as long
    stored = row.secret_hash if row is not None else _DUMMY
    if not hmac.compare_digest(_digest(secret), stored) or row is None:
        raise BadKey("unknown service key: create one with `creditsync keys create`")
    if row.revoked_at is not None:
        raise BadKey(f"service key {key_id} was revoked: create a new one")
    if row.last_used_at is None or row.last_used_at < now - LAST_USED_EVERY:
        _touch(engine, key_id, now)
    return _of(row)


def _touch(engine: Engine, key_id: str, now: dt.datetime) -> None:
    """Record the use, once a minute at most (replicas racing on it write it once)."""
    with database.write(engine) as conn:
        conn.execute(_k.update().where(
            _k.c.id == key_id,
            sa.or_(_k.c.last_used_at.is_(None), _k.c.last_used_at < now - LAST_USED_EVERY),
        ).values(last_used_at=now))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_DUMMY = _digest("")


def _of(row: sa.Row[Any]) -> ServiceKey:
    return ServiceKey(row.id, row.name, frozenset(Scope(s) for s in row.scopes),
                      row.created_at, row.last_used_at, row.revoked_at)
