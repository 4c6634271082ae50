"""The custom resources' specs as frozen values, validated beyond what the CRD schema can say.

The API server already enforces types, enums, bounds and the duration pattern; this adds
what a schema cannot express (an interval of at least a second, a catalog-valid plan) and
gives the handlers typed values instead of dictionaries. `spec.marketplaceAudit.interval`
is how long an instance goes between two questions to the marketplace (`0`: no periodic
audit); it matters only in an operator started with `CREDITSYNC_WIX_APP_ID`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from creditsync import config, errors, plans, policy, thresholds

MIN_INTERVAL = dt.timedelta(seconds=1)
MAX_BATCH_SIZE = 100_000
MAX_PLAN_ID = 100  # the catalog's id column
DEFAULT_INTERVAL = "60s"
DEFAULT_FULL_SCAN_INTERVAL = "1h"
DEFAULT_AUDIT_INTERVAL = "6h"
NO_AUDIT = dt.timedelta(0)


class SpecError(ValueError):
    """A spec the operator cannot act on; the message says which field and why."""


@dataclass(frozen=True)
class SyncSpec:
    """A `CreditSync` spec: when and how to converge."""

    interval: dt.timedelta = dt.timedelta(seconds=60)  # between ticks
    batch_size: int = 5000
    pol: policy.Policy = field(default_factory=policy.Policy)
    suspend: bool = False
    dry_run: bool = False
    audit_interval: dt.timedelta = dt.timedelta(hours=6)  # NO_AUDIT: no periodic audit
    full_scan_interval: dt.timedelta = dt.timedelta(hours=1)

    @property
    def audits(self) -> bool:
        """The periodic marketplace audit runs (not off, suspended or a dry run)."""
        return self.audit_interval > NO_AUDIT and not self.suspend and not self.dry_run


def _duration(spec: Mapping[str, Any], key: str, default: str,
              where: str = "spec") -> dt.timedelta:
    raw = spec.get(key, default)
    if not isinstance(raw, str):
        raise SpecError(f"{where}.{key} must be a duration string such as 60s, 5m or 6h")
    try:
        return config.parse_duration(raw)
    except config.ConfigError as exc:
        raise SpecError(f"{where}.{key}: {exc}") from exc


def _audit_interval(spec: Mapping[str, Any]) -> dt.timedelta:
    audit = spec.get("marketplaceAudit", {})
    if not isinstance(audit, Mapping):
        raise SpecError("spec.marketplaceAudit must be an object such as {interval: 6h}")
    interval = _duration(audit, "interval", DEFAULT_AUDIT_INTERVAL, "spec.marketplaceAudit")
    if NO_AUDIT < interval < MIN_INTERVAL:
        raise SpecError(f"spec.marketplaceAudit.interval must be 0 (off) or at least "
                        f"{MIN_INTERVAL.seconds}s")
    return interval


def parse_sync(spec: Mapping[str, Any]) -> SyncSpec:
    """The `CreditSync` spec, with the CRD's defaults for missing fields."""
    interval = _duration(spec, "interval", DEFAULT_INTERVAL)
    if interval < MIN_INTERVAL:
        raise SpecError(f"spec.interval must be at least {MIN_INTERVAL.seconds}s")
    full_scan = _duration(spec, "fullScanInterval", DEFAULT_FULL_SCAN_INTERVAL)
    if full_scan < MIN_INTERVAL:
        raise SpecError(f"spec.fullScanInterval must be at least {MIN_INTERVAL.seconds}s")
    grace = _duration(spec, "expiryGracePeriod", "0s")
    batch = spec.get("batchSize", 5000)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH_SIZE:
        raise SpecError(f"spec.batchSize must be an integer from 1 to {MAX_BATCH_SIZE:,}")
    usage = spec.get("usageOnPlanChange", "Reset")
    if usage not in config.USAGE_POLICIES:
        raise SpecError(
            f"spec.usageOnPlanChange must be one of {', '.join(config.USAGE_POLICIES)}")
    flags = {key: spec.get(key, False) for key in ("suspend", "dryRun")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise SpecError(f"spec.{key} must be true or false")
    low = spec.get("lowCreditThresholds", thresholds.TEXT_DEFAULT)
    if not isinstance(low, str):
        raise SpecError("spec.lowCreditThresholds must be a string such as 20%,5%")
    try:
        low_credit = thresholds.parse(low, where="spec.lowCreditThresholds")
    except errors.ConfigError as exc:
        raise SpecError(str(exc)) from exc
    return SyncSpec(
        interval=interval,
        batch_size=batch,
        pol=policy.Policy(policy.UsagePolicy(usage), grace, low_credit),
        suspend=flags["suspend"],
        dry_run=flags["dryRun"],
        audit_interval=_audit_interval(spec),
        full_scan_interval=full_scan,
    )


def plan_of(name: str, spec: Mapping[str, Any]) -> plans.Plan:
    """The catalog plan a `CreditPlan` named `name` stands for; raises `CatalogError`."""
    if len(name) > MAX_PLAN_ID:
        raise plans.CatalogError(f"plan {name}: the name may have at most {MAX_PLAN_ID} characters")
    if "id" in spec:
        raise plans.CatalogError(f"plan {name}: the plan id is the resource's name; remove spec.id")
    return plans.plan_from_mapping({**spec, "id": name}, where=f"plan {name}")
