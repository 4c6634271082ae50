"""`creditsync audit`: ask the marketplace what each instance pays for, heal what differs."""

from __future__ import annotations

import json
import sys

import click

from creditsync import audit, config, enums
from creditsync.cli.context import Context, pass_context, table

SHOW = 50


@click.command("audit")
@click.option("--all", "all_", is_flag=True, help="Every installed instance.")
@click.option("--instance", "instance_ids", multiple=True, help="This instance (repeatable).")
@click.option("--dry-run", is_flag=True, help="Report disagreements; heal nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_context
def command(ctx: Context, all_: bool, instance_ids: tuple[str, ...], dry_run: bool,
            as_json: bool) -> None:
    """Ask the marketplace's API (Wix App Instance API) what each instance pays for now, and
    heal disagreements as the missed webhook would have (a dry run only reports them).

    Exit 0 when every checked instance agrees or was healed; 1 when a dry run found
    disagreements or an instance could not be checked; 2 when the marketplace source is
    off (set CREDITSYNC_WIX_APP_ID).
    """
    if all_ == bool(instance_ids):
        raise click.UsageError("say what to audit: --all, or --instance ID (repeatable)")
    try:
        client = ctx.factory.marketplace_client()
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if client is None:
        click.echo("the marketplace source is off: set CREDITSYNC_WIX_APP_ID (the app's id) "
                   "and CREDITSYNC_APP_SECRET to turn it on", err=True)
        sys.exit(2)
    ctx.require_schema()
    ids = list(instance_ids) if instance_ids else audit.installed(ctx.engine, limit=10**9)
    show_bar = len(ids) > 20 and not as_json
    try:
        with click.progressbar(length=len(ids), label="asking the marketplace",
                               file=sys.stderr, hidden=not show_bar) as bar:
            report = audit.run(ctx.engine, client, instance_ids=ids, dry_run=dry_run,
                               progress=bar.update, alerter=ctx.factory.alerter())
    finally:
        client.close()
    if as_json:
        click.echo(json.dumps(report.as_json()))
    else:
        if report.disagreements:
            click.echo(table(["INSTANCE", "OUR PLAN", "MARKETPLACE", "ACTION"], [
                (d.instance_id, d.our_plan, d.marketplace_plan, d.action.value)
                for d in report.disagreements[:SHOW]]))
            if len(report.disagreements) > SHOW:
                click.echo(f"… and {len(report.disagreements) - SHOW:,} more (--json lists all)")
        for instance_id, why in report.failures[:SHOW]:
            click.echo(f"not checked: {instance_id}: {why}", err=True)
        verb = "would heal" if dry_run else "healed"
        healed = sum(d.action in (enums.AuditAction.HEALED, enums.AuditAction.WOULD_HEAL)
                     for d in report.disagreements)
        click.echo(f"checked {report.checked:,}, disagreed {report.disagreed:,}, {verb} "
                   f"{healed:,}, errors {report.errors:,} in {report.duration_s:.2f}s")
    sys.exit(0 if report.ok else 1)
