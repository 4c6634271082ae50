"""`creditsync policy show`: the transition policy every process converges with."""

from __future__ import annotations

import json

import click

from creditsync import config, policy_store, thresholds
from creditsync.cli.context import Context, pass_context


@click.group("policy")
def group() -> None:
    """The transition policy (usageOnPlanChange, expiryGracePeriod, lowCreditThresholds)."""


@group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_context
def show(ctx: Context, as_json: bool) -> None:
    """The stored policy and where it came from (a CreditSync, `creditsync run`'s
    environment, or the built-in defaults)."""
    ctx.require_schema()
    found = policy_store.current(ctx.engine)
    grace = config.format_duration(found.policy.expiry_grace_period)
    low = thresholds.text_of(found.policy.low_credit_thresholds)
    if as_json:
        click.echo(json.dumps({
            "usageOnPlanChange": found.policy.usage_on_plan_change,
            "expiryGracePeriod": grace,
            "expiryGracePeriodSeconds": int(found.policy.expiry_grace_period.total_seconds()),
            "lowCreditThresholds": low,
            "source": found.source,
            "updatedAt": found.updated_at.isoformat() if found.updated_at else None,
        }))
        return
    click.echo(f"usageOnPlanChange    {found.policy.usage_on_plan_change}\n"
               f"expiryGracePeriod    {grace}\n"
               f"lowCreditThresholds  {low}\n"
               f"source               {found.source}"
               + (f"\nupdated              {found.updated_at:%Y-%m-%d %H:%M:%S} UTC"
                  if found.updated_at else ""))
