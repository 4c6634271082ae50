"""`creditsync check` (report drift, exit 1 when any) and `creditsync sync` (repair it)."""

from __future__ import annotations

import json
import sys

import click

from creditsync import convergence, drift, enums
from creditsync.cli.context import Context, pass_context, table

CHECK_LIMIT = 50


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--instance", "instance_ids", multiple=True, help="Only these instances.")
@pass_context
def check(ctx: Context, as_json: bool, instance_ids: tuple[str, ...]) -> None:
    """List instances whose credits differ from their plan; exit 1 when any do.

    Reads only: nothing is repaired (use `creditsync sync`).
    """
    ctx.require_schema()
    ids = list(instance_ids) or None
    scanned, drifted = drift.check(ctx.engine, instance_ids=ids,
                                   batch_size=ctx.settings.batch_size)
    if as_json:
        click.echo(json.dumps({
            "scanned": scanned,
            "drifted": [
                {"instanceId": d.instance_id, "actualPlan": d.actual_plan,
                 "desiredPlan": d.desired_plan, "actualCreditsTotal": d.actual_credits_total,
                 "desiredCreditsTotal": d.desired_credits_total, "reason": d.reason}
                for d in drifted
            ],
        }))
    else:
        if drifted:
            click.echo(table(
                ["INSTANCE", "ACTUAL PLAN", "DESIRED PLAN", "ACTUAL CREDITS",
                 "DESIRED CREDITS", "REASON"],
                [(d.instance_id, d.actual_plan, d.desired_plan, d.actual_credits_total,
                  d.desired_credits_total, d.reason) for d in drifted[:CHECK_LIMIT]],
            ))
            if len(drifted) > CHECK_LIMIT:
                click.echo(f"… and {len(drifted) - CHECK_LIMIT:,} more (--json lists all)")
        click.echo(f"scanned {scanned:,} instances: {len(drifted):,} drifted"
                   + ("; run `creditsync sync --all` to repair" if drifted else ", all in sync"),
                   err=bool(drifted))
    sys.exit(1 if drifted else 0)


@click.command()
@click.option("--all", "all_", is_flag=True, help="Converge every instance.")
@click.option("--instance", "instance_ids", multiple=True, help="Converge this instance.")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_context
def sync(ctx: Context, all_: bool, instance_ids: tuple[str, ...], dry_run: bool,
         as_json: bool) -> None:
    """Converge instances now: repair drift, with a ledger row for every change."""
    if all_ == bool(instance_ids):
        raise click.UsageError("say what to sync: --all, or --instance ID (repeatable)")
    ctx.require_schema()
    ids = None if all_ else list(instance_ids)
    total = sum(1 for _ in drift.scan(ctx.engine, instance_ids=ids,
                                            batch_size=ctx.settings.batch_size))
    show_bar = total > 0 and not as_json
    with click.progressbar(length=total, label="converging", file=sys.stderr,
                           hidden=not show_bar) as bar:
        summary = convergence.converge(
            ctx.engine, trigger="cli", actor=enums.Actor.CLI, instance_ids=ids, dry_run=dry_run,
            batch_size=ctx.settings.batch_size, progress=bar.update)
    if as_json:
        click.echo(json.dumps({
            "runId": summary.run_id, "dryRun": dry_run, "scanned": summary.scanned,
            "drifted": summary.drifted, "repaired": summary.repaired, "failed": summary.failed,
            "planMissing": summary.plan_missing,
            "changes": [{"instanceId": c.instance_id, "kinds": c.kinds,
                         "before": c.before._asdict(), "after": c.after._asdict()}
                        for c in summary.changes],
        }, default=str))
        return
    if dry_run and summary.changes:
        click.echo(table(
            ["INSTANCE", "CHANGE", "PLAN", "CREDITS", "USED"],
            [(c.instance_id, c.kinds, f"{c.before.plan_id} → {c.after.plan_id}",
              f"{c.before.credits_total:,} → {c.after.credits_total:,}",
              f"{c.before.credits_used:,} → {c.after.credits_used:,}")
             for c in summary.changes[:CHECK_LIMIT]],
        ))
    verb = "would repair" if dry_run else "repaired"
    click.echo(f"scanned {summary.scanned:,}, drifted {summary.drifted:,}, {verb} "
               f"{summary.repaired:,}, failed {summary.failed:,}"
               + (f", plan missing {summary.plan_missing:,} "
                  f"({', '.join(sorted(summary.missing_plans))})" if summary.plan_missing else "")
               + f" in {summary.duration_s:.2f}s")
    if summary.failed:
        sys.exit(1)
