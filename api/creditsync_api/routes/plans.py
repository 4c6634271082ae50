"""`GET /api/plans`: the plan catalog, read-only.

The pages need it for plan names (the billing page says "Pro", not "pro") and the admin's
plan filter. It is public like a pricing page: plan ids, names, monthly credits and the
marketplace product ids they answer to, nothing about any instance. The catalog is changed
only by `creditsync plans apply` or `CreditPlan` resources, never through HTTP.
"""

from __future__ import annotations

from typing import Any, Self

from fastapi import APIRouter
from pydantic import ConfigDict

from creditsync import catalog, config, plans
from creditsync_api import errors, schemas
from creditsync_api.deps import EngineDep

router = APIRouter(prefix="/api/plans", tags=["billing"])

_PRO: dict[str, Any] = {"id": "pro", "displayName": "Pro", "monthlyCredits": 5000,
                        "aliases": ["pro-monthly", "pro-yearly"], "default": False}


class Rollover(schemas.ApiModel):
    """At the monthly reset, up to `maxCredits` unused plan credits become a grant that
    expires `expiresAfter` after the period's end."""

    model_config = ConfigDict(**{**schemas.ApiModel.model_config, "json_schema_extra": {
        "examples": [{"maxCredits": 1000, "expiresAfter": "30d"}]}})
    max_credits: int
    expires_after: str

    @classmethod
    def from_core(cls, rule: plans.Rollover | None) -> Self | None:
        if rule is None:
            return None
        return cls(max_credits=rule.max_credits,
                   expires_after=config.format_duration(rule.expires_after))


class Plan(schemas.ApiModel):
    """One plan of the catalog."""

    model_config = ConfigDict(**{**schemas.ApiModel.model_config,
                                 "json_schema_extra": {"examples": [_PRO]}})
    id: str
    display_name: str
    monthly_credits: int
    aliases: list[str]
    default: bool
    rollover: Rollover | None = None

    @classmethod
    def from_core(cls, plan: plans.Plan) -> Self:
        return cls(id=plan.id, display_name=plan.label, monthly_credits=plan.monthly_credits,
                   aliases=list(plan.aliases), default=plan.default,
                   rollover=Rollover.from_core(plan.rollover))


class PlanList(schemas.ApiModel):
    """The catalog, cheapest plan first."""

    model_config = ConfigDict(**{**schemas.ApiModel.model_config,
                                 "json_schema_extra": {"examples": [{"plans": [_PRO]}]}})
    plans: list[Plan]


@router.get("", summary="The plan catalog", response_model=PlanList,
            responses=errors.responses(503))
def list_plans(engine: EngineDep) -> PlanList:
    """Every plan with its display name, monthly credits and marketplace product ids."""
    return PlanList(plans=[Plan.from_core(plan) for plan in catalog.current(engine)])
