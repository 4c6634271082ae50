"""`creditsync plans list|apply`: read and replace the plan catalog."""

from __future__ import annotations

import json
from pathlib import Path

import click

from creditsync import catalog, clock, convergence, enums, plans, reports
from creditsync.cli.context import Context, pass_context, table


@click.group("plans")
def group() -> None:
    """The plan catalog."""


@group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def list_plans(ctx: Context, as_json: bool) -> None:
    """Show the catalog with how many instances are on each plan."""
    ctx.require_schema()
    found = catalog.current(ctx.engine)
    counts = reports.instances_per_plan(ctx.engine)
    if as_json:
        click.echo(json.dumps({"plans": [
            {**plans.plan_to_mapping(p), "instances": counts.get(p.id, 0)} for p in found]}))
        return
    click.echo(table(
        ["PLAN", "CREDITS", "DEFAULT", "ALIASES", "INSTANCES"],
        [(p.id, p.monthly_credits, "yes" if p.default else "", ", ".join(p.aliases) or "-",
          counts.get(p.id, 0)) for p in found],
    ))


@group.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--no-sync", is_flag=True, help="Change the catalog only; converge later.")
@pass_context
def apply_plans(ctx: Context, file: Path, no_sync: bool) -> None:
    """Replace the catalog with FILE, then converge every instance against it (also when
    the catalog was already equal to FILE)."""
    ctx.require_schema()
    try:
        new = plans.load_file(file)
    except plans.CatalogError as exc:
        raise click.ClickException(f"{exc} (nothing was changed)") from exc
    change = catalog.replace_all(ctx.engine, new, clock.utcnow())
    if change.touched:
        click.echo("catalog: " + "; ".join(
            f"{what} {', '.join(ids)}" for what, ids in
            (("added", change.added), ("changed", change.changed), ("removed", change.removed))
            if ids))
    else:
        click.echo("catalog unchanged")
    if no_sync:
        click.echo("not converged (--no-sync): run `creditsync sync --all` when ready")
        return
    # converged whether or not the catalog changed: what it leaves behind must match it
    summary = convergence.converge(ctx.engine, trigger="plan_change", actor=enums.Actor.CLI,
                                   batch_size=ctx.settings.batch_size)
    click.echo(f"converged: repaired {summary.repaired:,} of {summary.scanned:,} instances"
               + (f"; {summary.plan_missing:,} on removed plans left as they are"
                  if summary.plan_missing else ""))

