"""`creditsync webhooks list|replay`: the inbox from the command line."""

from __future__ import annotations

import click

from creditsync import clock, errors, inbox, reports
from creditsync.cli.context import Context, pass_context, table


@click.group("webhooks")
def group() -> None:
    """The webhook inbox."""


@group.command("list")
@click.option("--status", type=click.Choice(inbox.STATUSES), help="Only events in this state.")
@click.option("--limit", default=50, show_default=True)
@pass_context
def list_events(ctx: Context, status: str | None, limit: int) -> None:
    """Newest events first, with their status, attempts and last error."""
    ctx.require_schema()
    page = reports.list_webhooks(ctx.engine, status=status, limit=limit)
    click.echo(table(
        ["EVENT", "INSTANCE", "TYPE", "PRODUCT", "STATUS", "ATTEMPTS", "RECEIVED", "ERROR"],
        [(r.event_id, r.instance_id, r.event_type, r.product_id, r.status, r.attempts,
          r.received_at, (r.last_error or "")[:60]) for r in page.items],
    ))
    counts = inbox.counts(ctx.engine)
    click.echo(", ".join(f"{k} {v}" for k, v in counts.items() if v) or "the inbox is empty")


@group.command("replay")
@click.argument("event_id")
@pass_context
def replay(ctx: Context, event_id: str) -> None:
    """Apply a failed, quarantined, pending or ignored event again."""
    ctx.require_schema()
    try:
        status = inbox.replay(ctx.engine, event_id, now=clock.utcnow())
    except (errors.NotFound, errors.NotReplayable) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"event {event_id}: {status}")
