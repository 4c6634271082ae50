"""The plan catalog: what each plan pays for, its marketplace aliases, the default plan.

Pure data and validation. Reading and writing the `plans` table is in `catalog`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from creditsync import config, errors

PLAN_KEYS = frozenset({"id", "monthlyCredits", "aliases", "displayName", "default", "rollover"})
ROLLOVER_KEYS = frozenset({"maxCredits", "expiresAfter"})


CatalogError = errors.CatalogError


@dataclass(frozen=True)
class Rollover:
    """At the monthly reset, up to `max_credits` unused plan credits become a grant that
    expires `expires_after` after the period's end."""

    max_credits: int
    expires_after: dt.timedelta


@dataclass(frozen=True)
class Plan:
    """One plan: `monthly_credits` is the allocation `credits_total` must equal."""

    id: str
    monthly_credits: int
    aliases: tuple[str, ...] = ()
    display_name: str | None = None
    default: bool = False
    rollover: Rollover | None = None

    @property
    def label(self) -> str:
        return self.display_name or self.id.capitalize()


@dataclass(frozen=True)
class Catalog:
    """A validated set of plans with exactly one default."""

    plans: tuple[Plan, ...]
    _by_name: Mapping[str, Plan] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate(self.plans)
        names: dict[str, Plan] = {}
        for plan in self.plans:
            names[plan.id] = plan
            for alias in plan.aliases:
                names[alias] = plan
        object.__setattr__(self, "_by_name", names)

    @property
    def default(self) -> Plan:
        return next(plan for plan in self.plans if plan.default)

    def get(self, plan_id: str) -> Plan | None:
        return next((plan for plan in self.plans if plan.id == plan_id), None)

    def resolve(self, product_id: str) -> Plan | None:
        """The plan a marketplace product id (plan id or alias) stands for, if any."""
        return self._by_name.get(product_id)


def validate(plans: Sequence[Plan], require_default: bool = True) -> None:
    """Raise `CatalogError` for negative credits, not exactly one default, reused names."""
    if not plans and require_default:
        raise CatalogError("the catalog has no plans: add at least the default plan")
    seen: dict[str, str] = {}
    for plan in plans:
        if not plan.id or not plan.id.strip():
            raise CatalogError("a plan has an empty id")
        if isinstance(plan.monthly_credits, bool) or not isinstance(plan.monthly_credits, int):
            raise CatalogError(f"plan {plan.id}: monthlyCredits must be an integer")
        if plan.monthly_credits < 0:
            raise CatalogError(
                f"plan {plan.id}: monthlyCredits is {plan.monthly_credits}; it must be >= 0"
            )
        if plan.rollover is not None:
            rule = plan.rollover
            if (isinstance(rule.max_credits, bool) or not isinstance(rule.max_credits, int)
                    or rule.max_credits < 0):
                raise CatalogError(f"plan {plan.id}: rollover.maxCredits must be an integer "
                                   ">= 0")
            if rule.expires_after <= dt.timedelta(0):
                raise CatalogError(f"plan {plan.id}: rollover.expiresAfter must be longer "
                                   "than 0s")
        for name in (plan.id, *plan.aliases):
            if name in seen:
                what = "id" if name == plan.id else "alias"
                raise CatalogError(
                    f"plan {plan.id}: {what} {name!r} is already used by plan {seen[name]}"
                )
            seen[name] = plan.id
    defaults = [plan.id for plan in plans if plan.default]
    if not defaults and require_default:
        raise CatalogError("no default plan: mark exactly one plan with `default: true`")
    if len(defaults) > 1:
        raise CatalogError(
            f"plans {', '.join(defaults)} are all marked default: keep exactly one"
        )


def plan_from_mapping(raw: Mapping[str, Any], where: str = "plan") -> Plan:
    """Build a plan from its camelCase form (YAML file or `CreditPlan` spec)."""
    if not isinstance(raw, Mapping):
        raise CatalogError(f"{where}: expected a mapping with id and monthlyCredits")
    plan_id = raw.get("id")
    name = f"plan {plan_id}" if plan_id else where
    unknown = sorted(set(raw) - PLAN_KEYS)
    if unknown:
        raise CatalogError(
            f"{name}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(PLAN_KEYS))}"
        )
    if not isinstance(plan_id, str) or not plan_id:
        raise CatalogError(f"{where}: `id` is missing or not a string")
    credits = raw.get("monthlyCredits")
    if isinstance(credits, bool) or not isinstance(credits, int):
        raise CatalogError(f"{name}: monthlyCredits must be an integer, got {credits!r}")
    aliases = raw.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise CatalogError(f"{name}: aliases must be a list of non-empty strings")
    display = raw.get("displayName")
    if display is not None and not isinstance(display, str):
        raise CatalogError(f"{name}: displayName must be a string")
    default = raw.get("default", False)
    if not isinstance(default, bool):
        raise CatalogError(f"{name}: default must be true or false")
    return Plan(plan_id, credits, tuple(aliases), display, default,
                rollover_from_mapping(raw.get("rollover"), name))


def rollover_from_mapping(raw: Any, name: str) -> Rollover | None:
    """`rollover: {maxCredits, expiresAfter}` (None: absent); `expiresAfter` a duration such
    as `30d` or `720h`."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) != ROLLOVER_KEYS:
        raise CatalogError(f"{name}: rollover must be a mapping with exactly maxCredits and "
                           "expiresAfter (e.g. {maxCredits: 500, expiresAfter: 30d})")
    most = raw["maxCredits"]
    if isinstance(most, bool) or not isinstance(most, int) or most < 0:
        raise CatalogError(f"{name}: rollover.maxCredits must be an integer >= 0, got {most!r}")
    after = raw["expiresAfter"]
    if not isinstance(after, str):
        raise CatalogError(f"{name}: rollover.expiresAfter must be a duration such as 30d")
    try:
        duration = config.parse_duration(after)
    except errors.ConfigError as exc:
        raise CatalogError(f"{name}: rollover.expiresAfter: {exc}") from exc
    if duration <= dt.timedelta(0):
        raise CatalogError(f"{name}: rollover.expiresAfter must be longer than 0s")
    return Rollover(most, duration)


def plan_to_mapping(plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {"id": plan.id, "monthlyCredits": plan.monthly_credits}
    if plan.aliases:
        out["aliases"] = list(plan.aliases)
    if plan.display_name:
        out["displayName"] = plan.display_name
    if plan.default:
        out["default"] = True
    if plan.rollover is not None:
        out["rollover"] = {"maxCredits": plan.rollover.max_credits,
                           "expiresAfter": config.format_duration(plan.rollover.expires_after)}
    return out


def parse(document: Any, source: str = "catalog") -> Catalog:
    """Validate a parsed YAML document of the form `{plans: [...]}`."""
    if not isinstance(document, Mapping) or set(document) != {"plans"}:
        raise CatalogError(f"{source}: expected a single top-level key `plans` holding a list")
    raw_plans = document["plans"]
    if not isinstance(raw_plans, list):
        raise CatalogError(f"{source}: `plans` must be a list")
    plans = [plan_from_mapping(raw, f"plan #{n + 1}") for n, raw in enumerate(raw_plans)]
    try:
        return Catalog(tuple(plans))
    except CatalogError as exc:
        raise CatalogError(f"{source}: {exc}") from exc


def load_file(path: Path) -> Catalog:
    """Read and validate a catalog YAML file."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CatalogError(f"{path}: cannot be read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML ({exc})") from exc
    return parse(document, str(path))


def catalog_of(plans: Iterable[Plan]) -> Catalog:
    return Catalog(tuple(sorted(plans, key=lambda plan: (plan.monthly_credits, plan.id))))


DEFAULT_CATALOG = Catalog(
    (
        Plan("free", 100, display_name="Free", default=True),
        Plan("starter", 1_000, display_name="Starter"),
        Plan("pro", 5_000, display_name="Pro"),
        Plan("scale", 25_000, display_name="Scale"),
    )
)
