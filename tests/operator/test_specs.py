"""Spec parsing: the CRD's defaults, durations, and what only the operator can reject."""

from __future__ import annotations

import datetime as dt

import pytest

from creditsync import plans, policy
from creditsync_operator import specs


def test_an_empty_spec_gets_the_crd_defaults() -> None:
    assert specs.parse_sync({}) == specs.SyncSpec(
        interval=dt.timedelta(seconds=60), batch_size=5000, pol=policy.Policy("Reset"),
        suspend=False, dry_run=False)


def test_a_full_spec() -> None:
    parsed = specs.parse_sync({"interval": "1h30m", "batchSize": 200,
                               "usageOnPlanChange": "Preserve", "expiryGracePeriod": "2d",
                               "suspend": True, "dryRun": True, "fullScanInterval": "1d"})
    assert parsed == specs.SyncSpec(
        interval=dt.timedelta(hours=1, minutes=30), batch_size=200,
        pol=policy.Policy("Preserve", dt.timedelta(days=2)), suspend=True, dry_run=True,
        full_scan_interval=dt.timedelta(days=1))


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("5m", 300),
                                               ("6h", 21600), ("1d2h", 93600)])
def test_intervals(text: str, seconds: int) -> None:
    assert specs.parse_sync({"interval": text}).interval.total_seconds() == seconds


@pytest.mark.parametrize(("spec", "says"), [
    ({"interval": "0s"}, "spec.interval must be at least 1s"),
    ({"interval": "5 minutes"}, "spec.interval: '5 minutes' is not a duration"),
    ({"interval": 60}, "spec.interval must be a duration string"),
    ({"fullScanInterval": "0"}, "spec.fullScanInterval must be at least 1s"),
    ({"fullScanInterval": "hourly"}, "spec.fullScanInterval: 'hourly' is not a duration"),
    ({"expiryGracePeriod": "soon"}, "spec.expiryGracePeriod: 'soon' is not a duration"),
    ({"batchSize": 0}, "spec.batchSize must be an integer from 1 to 100,000"),
    ({"batchSize": True}, "spec.batchSize must be an integer"),
    ({"usageOnPlanChange": "Keep"}, "spec.usageOnPlanChange must be one of Reset, Preserve"),
    ({"dryRun": "yes"}, "spec.dryRun must be true or false"),
    ({"lowCreditThresholds": 20}, "spec.lowCreditThresholds must be a string such as 20%,5%"),
    ({"lowCreditThresholds": "120%"},
     "spec.lowCreditThresholds='120%': '120%' is not a percentage between 0 and 100"),
])
def test_bad_specs_say_which_field(spec: dict[str, object], says: str) -> None:
    with pytest.raises(specs.SpecError, match="^" + says.replace("(", r"\(")):
        specs.parse_sync(spec)


def test_low_credit_thresholds_go_into_the_stored_policy() -> None:
    assert specs.parse_sync({}).pol.low_credit_thresholds == (2000, 500)
    assert specs.parse_sync({"lowCreditThresholds": "50%, 10"}).pol.low_credit_thresholds == (
        5000, 1000)
    assert specs.parse_sync({"lowCreditThresholds": "none"}).pol.low_credit_thresholds == ()


def test_the_marketplace_audit_runs_every_six_hours_unless_told_otherwise() -> None:
    assert specs.parse_sync({}).audit_interval == dt.timedelta(hours=6)
    assert specs.parse_sync({"marketplaceAudit": {}}).audit_interval == dt.timedelta(hours=6)
    parsed = specs.parse_sync({"marketplaceAudit": {"interval": "1h30m"}})
    assert (parsed.audit_interval, parsed.audits) == (dt.timedelta(hours=1, minutes=30), True)


@pytest.mark.parametrize("spec", [
    {"marketplaceAudit": {"interval": "0"}},
    {"marketplaceAudit": {"interval": "0s"}},
    {"suspend": True},  # the audit heals: a repair
    {"dryRun": True},
])
def test_zero_a_suspension_or_a_dry_run_turns_the_audit_off(spec: dict[str, object]) -> None:
    assert specs.parse_sync(spec).audits is False


@pytest.mark.parametrize(("spec", "says"), [
    ({"marketplaceAudit": "6h"}, "spec.marketplaceAudit must be an object such as {interval: 6h}"),
    ({"marketplaceAudit": {"interval": 21600}},
     "spec.marketplaceAudit.interval must be a duration string"),
    ({"marketplaceAudit": {"interval": "often"}},
     "spec.marketplaceAudit.interval: 'often' is not a duration"),
])
def test_a_bad_audit_interval_says_which_field(spec: dict[str, object], says: str) -> None:
    with pytest.raises(specs.SpecError, match="^" + says.replace("{", r"\{")):
        specs.parse_sync(spec)


def test_a_plan_is_named_by_its_resource() -> None:
    plan = specs.plan_of("pro", {"monthlyCredits": 5000, "aliases": ["pro-monthly"],
                                 "displayName": "Pro", "default": False})
    assert plan == plans.Plan("pro", 5000, ("pro-monthly",), "Pro", False)


def test_a_plans_rollover_comes_from_its_spec() -> None:
    plan = specs.plan_of("pro", {"monthlyCredits": 5000,
                                 "rollover": {"maxCredits": 800, "expiresAfter": "720h"}})
    assert plan.rollover == plans.Rollover(800, dt.timedelta(hours=720))


@pytest.mark.parametrize(("name", "spec", "says"), [
    ("x" * 101, {"monthlyCredits": 1}, "at most 100 characters"),
    ("pro", {"id": "other", "monthlyCredits": 1}, "remove spec.id"),
    ("pro", {"monthlyCredits": "5000"}, "monthlyCredits must be an integer"),
    ("pro", {"monthlyCredits": 1, "color": "red"}, "unknown key"),
])
def test_plans_the_catalog_cannot_take(name: str, spec: dict[str, object], says: str) -> None:
    with pytest.raises(plans.CatalogError, match=says):
        specs.plan_of(name, spec)
