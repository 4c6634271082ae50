"""`creditsync dev`: tools for demos, benchmarks and trying creditsync locally."""

from __future__ import annotations

import click

from creditsync import convergence, seed
from creditsync.cli.context import Context, pass_context


@click.group("dev")
def group() -> None:
    """Development helpers (local data and test signing)."""


@group.command("seed")
@click.option("--instances", type=click.IntRange(min=0), required=True)
@click.option("--drifted", type=click.FloatRange(0, 100), default=10.0, show_default=True,
              help="Percent of instances written drifted (stuck at the wrong credits).")
@click.option("--prefix", default="seed-", show_default=True, help="Instance id prefix.")
@pass_context
def seed_cmd(ctx: Context, instances: int, drifted: float, prefix: str) -> None:
    """Write N instances, round(N × PCT / 100) of them drifted, without converging."""
    ctx.require_schema()
    count = seed.seed(ctx.engine, instances, drifted, now=convergence.utcnow(), prefix=prefix)
    click.echo(f"seeded {instances:,} instances ({count:,} drifted); "
               "`creditsync check` lists them, `creditsync sync --all` repairs them")
