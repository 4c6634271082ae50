"""`creditsync keys create|list|revoke`: service keys for an app's own backend."""

from __future__ import annotations

import json

import click

from creditsync import clock, enums, errors, keys
from creditsync.cli.context import Context, pass_context, table

_SCOPES = ", ".join(s.value for s in enums.Scope)


@click.group("keys")
def group() -> None:
    """Service keys (`Authorization: Bearer csk_…`) for the app's backend."""


@group.command("create")
@click.option("--name", required=True, help="Who uses the key (shown in `keys list`).")
@click.option("--scopes", required=True, help=f"Comma-separated: {_SCOPES}.")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"id", "key", "name", "scopes"}.')
@pass_context
def create(ctx: Context, name: str, scopes: str, as_json: bool) -> None:
    """Create a key and print it once (only a hash of it is stored)."""
    ctx.require_schema()
    try:
        created = keys.create(ctx.engine, name, scopes.split(","), now=clock.utcnow())
    except errors.InvalidRequest as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"id": created.id, "key": created.key, "name": created.name,
                               "scopes": [s.value for s in created.scopes]}))
        return
    click.echo(created.key)
    click.echo(f"service key {created.id} ({created.name}: "
               f"{', '.join(s.value for s in created.scopes)}); it is shown this once: "
               "store it in the app backend's secrets", err=True)


@group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_context
def list_keys(ctx: Context, as_json: bool) -> None:
    """Every key, newest first, revoked ones too (never a secret)."""
    ctx.require_schema()
    found = keys.list_keys(ctx.engine)
    if as_json:
        click.echo(json.dumps([{
            "id": k.id, "name": k.name, "scopes": sorted(s.value for s in k.scopes),
            "createdAt": k.created_at.isoformat(),
            "lastUsedAt": k.last_used_at.isoformat() if k.last_used_at else None,
            "revokedAt": k.revoked_at.isoformat() if k.revoked_at else None} for k in found]))
        return
    click.echo(table(["ID", "NAME", "SCOPES", "CREATED", "LAST USED", "REVOKED"], [
        (k.id, k.name, ",".join(sorted(s.value for s in k.scopes)), k.created_at,
         k.last_used_at, k.revoked_at) for k in found]))


@group.command("revoke")
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="Print the revoked key as JSON.")
@pass_context
def revoke(ctx: Context, key_id: str, as_json: bool) -> None:
    """Revoke a key: every replica refuses it from the next request on."""
    ctx.require_schema()
    try:
        found = keys.revoke(ctx.engine, key_id, now=clock.utcnow())
    except errors.NotFound as exc:
        raise click.ClickException(str(exc)) from exc
    assert found.revoked_at is not None
    if as_json:
        click.echo(json.dumps({"id": found.id, "name": found.name,
                               "revokedAt": found.revoked_at.isoformat()}))
        return
    click.echo(f"service key {found.id} ({found.name}) revoked at "
               f"{found.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
