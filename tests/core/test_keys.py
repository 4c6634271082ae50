"""Service keys: created once, stored as a hash, looked up by id, revoked at once; the
`creditsync keys` command."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import errors, keys
from creditsync.storage import database, models
from tests.core.helpers import HOUR
from tests.core.test_cli import run
from tests.support.times import T0

SECOND = HOUR / 3600


def test_a_key_is_shown_once_and_only_its_hash_is_stored(engine: Engine) -> None:
    created = keys.create(engine, " worker ", ["credits:consume", "credits:read"], now=T0)
    assert created.key.startswith(f"csk_{created.id}_")
    assert (created.name, [s.value for s in created.scopes]) == (
        "worker", ["credits:read", "credits:consume"])
    with database.read(engine) as conn:
        row = conn.execute(sa.select(models.SERVICE_KEYS)).one()
    secret = created.key.split("_", 2)[2]
    assert secret not in str(tuple(row))
    assert len(row.secret_hash) == 64
    found = keys.authenticate(engine, created.key, now=T0)
    assert (found.id, found.scopes) == (created.id, frozenset(created.scopes))


def test_bad_keys_are_refused(engine: Engine) -> None:
    created = keys.create(engine, "worker", ["credits:read"], now=T0)
    other = keys.create(engine, "other", ["credits:read"], now=T0)
    swapped = f"csk_{created.id}_{other.key.split('_', 2)[2]}"
    for raw, message in ((swapped, "unknown service key"), ("csk_x_y", "malformed"),
                         (created.key + "x", "malformed")):
        with pytest.raises(keys.BadKey, match=message):
            keys.authenticate(engine, raw, now=T0)
    revoked = keys.revoke(engine, created.id, now=T0 + HOUR)
    assert revoked.revoked_at == T0 + HOUR
    assert keys.revoke(engine, created.id, now=T0 + 2 * HOUR).revoked_at == T0 + HOUR
    with pytest.raises(keys.BadKey, match="was revoked"):
        keys.authenticate(engine, created.key, now=T0 + HOUR)
    with pytest.raises(keys.UnknownKey):
        keys.revoke(engine, "0123456789abcdef", now=T0)


def test_bad_scopes_and_names_say_what_to_use(engine: Engine) -> None:
    with pytest.raises(errors.InvalidRequest, match="unknown scope 'credits:all': use"):
        keys.create(engine, "w", ["credits:all"], now=T0)
    with pytest.raises(errors.InvalidRequest, match="at least one scope"):
        keys.create(engine, "w", [""], now=T0)
    with pytest.raises(errors.InvalidRequest, match="needs a name"):
        keys.create(engine, "  ", ["credits:read"], now=T0)


def test_last_use_is_written_at_most_once_a_minute(engine: Engine) -> None:
    created = keys.create(engine, "worker", ["credits:read"], now=T0)

    def last_used() -> object:
        return next(k.last_used_at for k in keys.list_keys(engine) if k.id == created.id)

    assert last_used() is None
    keys.authenticate(engine, created.key, now=T0)
    keys.authenticate(engine, created.key, now=T0 + 30 * SECOND)
    assert last_used() == T0
    keys.authenticate(engine, created.key, now=T0 + 61 * SECOND)
    assert last_used() == T0 + 61 * SECOND


def test_the_keys_command(db_url: str) -> None:
    created = json.loads(run(db_url, "keys", "create", "--name", "render worker", "--scopes",
                             "credits:read,credits:consume", "--json", check=True).stdout)
    assert set(created) == {"id", "key", "name", "scopes"}
    assert created["scopes"] == ["credits:read", "credits:consume"]
    assert created["key"].startswith(f"csk_{created['id']}_")
    plain = run(db_url, "keys", "create", "--name", "other", "--scopes", "credits:grant",
                check=True)
    assert plain.stdout.startswith("csk_")
    assert "shown this once" in plain.stderr
    listed = run(db_url, "keys", "list", check=True).stdout
    assert "render worker" in listed
    assert created["key"] not in listed
    revoked = run(db_url, "keys", "revoke", created["id"], check=True)
    assert f"service key {created['id']} (render worker) revoked" in revoked.stdout
    rows = json.loads(run(db_url, "keys", "list", "--json", check=True).stdout)
    assert next(r for r in rows if r["id"] == created["id"])["revokedAt"] is not None
    bad = run(db_url, "keys", "create", "--name", "x", "--scopes", "credits:all")
    assert bad.returncode == 2
    assert "unknown scope 'credits:all'" in bad.stderr
    assert run(db_url, "keys", "revoke", "nope").returncode == 1
