"""The API's JSON: pydantic models in camelCase (ARCHITECTURE.md), each with an OpenAPI example.

Response models are built from the core's dataclasses with `from_core()`; routes never
assemble JSON by hand.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from creditsync import (
    audit,
    config,
    convergence,
    enums,
    grants,
    instances,
    keys,
    manual,
    outbox,
    policy,
    policy_store,
    reports,
    reservations,
    thresholds,
    usage,
)

WebhookStatus = enums.EventStatus
DeliveryStatus = enums.DeliveryStatus
AppEvent = enums.AppEvent
LedgerKind = enums.LedgerKind

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL characters
InstanceId = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NO_NUL)]

_T0 = "2026-01-10T12:00:00Z"
_T1 = "2026-02-10T12:00:00Z"


def _config(*examples: dict[str, Any], forbid: bool = False) -> ConfigDict:
    config = ConfigDict(alias_generator=to_camel, validate_by_name=True,
                        validate_by_alias=True, json_schema_extra={"examples": list(examples)})
    if forbid:
        config["extra"] = "forbid"
    return config


def _example(**example: Any) -> ConfigDict:
    return _config(example)


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python. Request bodies refuse unknown keys
    (`_config(forbid=True)`), so a typo is an error rather than silently ignored."""

    model_config = _config()


# -- errors and operations --------------------------------------------------------------


class ErrorBody(ApiModel):
    """Every error answer has this shape."""

    model_config = _example(error="token_expired",
                            message="the instance token was signed 30 hours ago (max 24 hours):"
                                    " reload the dashboard to get a fresh one")
    error: str = Field(description="Machine-readable code, e.g. `bad_signature`.")
    message: str = Field(description="What is wrong and what to do about it.")


class InsufficientCreditsBody(ErrorBody):
    """402: the instance has fewer credits left than asked for."""

    model_config = _example(error="insufficient_credits",
                            message="instance 9f1c… has 40 credits left, 100 were asked for: "
                                    "upgrade the plan or wait for the monthly reset",
                            creditsRemaining=40, requested=100)
    credits_remaining: int
    requested: int


class Health(ApiModel):
    model_config = _example(status="ok")
    status: Literal["ok", "ready"]


# -- webhooks ---------------------------------------------------------------------------


class WebhookAck(ApiModel):
    """The answer to a verified webhook: it is stored in the inbox, with this outcome."""

    model_config = _example(status="applied", eventId="3f0e1d2c-5b6a-4c7d-8e9f-0a1b2c3d4e5f")
    status: WebhookStatus = Field(description=(
        "`applied`: desired state updated and the instance converged; `duplicate`: seen "
        "before, nothing changed; `stale`: older than the newest accepted event, nothing "
        "changed; `ignored`: unknown event type; `quarantined`: unknown product id, applied "
        "once the plan catalog knows it; `pending`: stored, applied by the retry loop."))
    event_id: str = Field(description="The inbox event id (the first delivery's, for "
                                      "duplicates).")


# -- instance credits -------------------------------------------------------------------


_CREDITS: dict[str, Any] = {
    "instanceId": "9f1c2b7e-0d3a-4c55-8a61-3f4f3c1d2e10", "plan": "pro", "creditsTotal": 5000,
    "bonusCredits": 0, "creditsUsed": 120, "creditsRemaining": 4830, "creditsHeld": 50,
    "periodStart": _T0,
    "periodEnd": _T1, "inSync": True, "lastSyncedAt": _T0}


class Credits(ApiModel):
    """An instance's credits."""

    model_config = _example(**_CREDITS)
    instance_id: str
    plan: str
    credits_total: int
    bonus_credits: int
    credits_used: int
    credits_remaining: int = Field(description="What can still be spent: plan credits left "
                                               "plus bonus, minus open holds.")
    credits_held: int = Field(description="Credits held by open reservations.")
    period_start: dt.datetime
    period_end: dt.datetime
    in_sync: bool = Field(description="The credits equal what the subscription pays for now.")
    last_synced_at: dt.datetime | None

    @classmethod
    def from_core(cls, credits: instances.Credits) -> Self:
        return cls(**vars(credits))


class Numbers(ApiModel):
    """The part of an instance that convergence changes."""

    model_config = _example(plan="free", creditsTotal=100, creditsUsed=40, bonusCredits=0,
                            periodStart=_T0, periodEnd=_T1)
    plan: str
    credits_total: int
    credits_used: int
    bonus_credits: int
    period_start: dt.datetime
    period_end: dt.datetime

    @classmethod
    def from_core(cls, numbers: policy.Numbers) -> Self:
        return cls(plan=numbers.plan_id, credits_total=numbers.credits_total,
                   credits_used=numbers.credits_used, bonus_credits=numbers.bonus_credits,
                   period_start=numbers.period_start, period_end=numbers.period_end)


_NUMBERS_BEFORE = {"plan": "free", "creditsTotal": 100, "creditsUsed": 40, "bonusCredits": 0,
                   "periodStart": _T0, "periodEnd": _T1}
_NUMBERS_AFTER = {**_NUMBERS_BEFORE, "plan": "pro", "creditsTotal": 5000}


class Step(ApiModel):
    """One change convergence made (or, in a dry run, would make)."""

    model_config = _example(kind="drift_repair", reason="plan free, subscription says pro",
                            before=_NUMBERS_BEFORE, after=_NUMBERS_AFTER)
    kind: LedgerKind
    reason: str
    before: Numbers
    after: Numbers

    @classmethod
    def from_core(cls, step: policy.Step) -> Self:
        return cls(kind=step.kind, reason=step.reason, before=Numbers.from_core(step.before),
                   after=Numbers.from_core(step.after))


# A request about some instances (`instanceIds`) or all (`all: true`), never both or neither.
ONE_SCOPE: dict[str, Any] = {"oneOf": [
    {"required": ["instanceIds"], "properties": {"instanceIds": {"type": "array"},
                                                 "all": {"const": False}}},
    {"required": ["all"], "properties": {"all": {"const": True},
                                         "instanceIds": {"type": "null"}}},
]}


def check_scope(all_: bool, instance_ids: list[str] | None, what: str) -> None:
    if all_ == (instance_ids is not None):
        raise ValueError(f"say what to {what}: either instanceIds or all: true")


class Disagreement(ApiModel):
    """The marketplace's plan for an instance beside ours, and what the audit did."""

    model_config = _example(instanceId="9f1c2b7e", ourPlan="free", marketplacePlan="pro",
                            action="healed")
    instance_id: str
    our_plan: str
    marketplace_plan: str
    action: enums.AuditAction

    @classmethod
    def from_core(cls, found: audit.Disagreement) -> Self:
        return cls(instance_id=found.instance_id, our_plan=found.our_plan,
                   marketplace_plan=found.marketplace_plan, action=found.action)


class AuditRequest(ApiModel):
    """Ask the marketplace about `instanceIds`, or every installed instance with `all: true`;
    `dryRun` only reports."""

    model_config = _config({"instanceIds": ["9f1c2b7e"], "dryRun": True},
                           {"all": True, "dryRun": False}, forbid=True)
    model_config["json_schema_extra"] = {
        **model_config["json_schema_extra"], **ONE_SCOPE}  # type: ignore[dict-item]
    instance_ids: list[InstanceId] | None = Field(default=None, min_length=1, max_length=1000)
    all: bool = False
    dry_run: bool = False

    @model_validator(mode="after")
    def _one_scope(self) -> Self:
        check_scope(self.all, self.instance_ids, "audit")
        return self


class AuditResult(ApiModel):
    """`{"checked", "disagreed", "healed", "errors", "disagreements"}`, as `creditsync audit
    --json` prints it."""

    model_config = _example(checked=3, disagreed=1, healed=1, errors=0, disagreements=[
        {"instanceId": "9f1c2b7e", "ourPlan": "free", "marketplacePlan": "pro",
         "action": "healed"}])
    checked: int
    disagreed: int
    healed: int
    errors: int
    disagreements: list[Disagreement]

    @classmethod
    def from_core(cls, report: audit.Report) -> Self:
        return cls(checked=report.checked, disagreed=report.disagreed, healed=report.healed,
                   errors=report.errors,
                   disagreements=[Disagreement.from_core(d) for d in report.disagreements])


class SyncCreditsResult(ApiModel):
    """`POST /api/billing/sync-credits`: the credits before and after, and what changed."""

    model_config = _example(
        before={**_CREDITS, "plan": "free", "creditsTotal": 100, "creditsRemaining": 0,
                "inSync": False},
        after=_CREDITS,
        changes=[{"kind": "drift_repair", "reason": "plan free, subscription says pro",
                  "before": _NUMBERS_BEFORE, "after": _NUMBERS_AFTER}])
    before: Credits
    after: Credits
    changes: list[Step]
    marketplace: Disagreement | None = Field(
        default=None, description="The marketplace disagreed with our plan (the source is "
                                  "on): what it said and what was done.")
    marketplace_error: str | None = Field(
        default=None, description="The marketplace could not be asked (nothing changed; the "
                                  "instance is first in line for the next audit).")

    @classmethod
    def from_core(cls, resync: manual.Resync) -> Self:
        return cls(before=Credits.from_core(resync.before),
                   after=Credits.from_core(resync.after),
                   changes=[Step.from_core(step) for step in resync.steps],
                   marketplace=Disagreement.from_core(resync.marketplace)
                   if resync.marketplace else None,
                   marketplace_error=resync.marketplace_error)


_ENTRY = {"id": 42, "at": _T0, "kind": "plan_change", "actor": "webhook",
          "correlationId": "3f0e1d2c-5b6a-4c7d-8e9f-0a1b2c3d4e5f", "planBefore": "free",
          "planAfter": "pro", "creditsTotalBefore": 100, "creditsTotalAfter": 5000,
          "creditsUsedBefore": 40, "creditsUsedAfter": 0, "bonusBefore": 0, "bonusAfter": 0,
          "reason": "accepted subscription change (rev 1)"}


class HistoryEntry(ApiModel):
    """One ledger row: a change to an instance's numbers, with who did it and why."""

    model_config = _example(**_ENTRY)
    id: int
    at: dt.datetime
    kind: LedgerKind
    actor: str
    correlation_id: str | None
    plan_before: str | None
    plan_after: str
    credits_total_before: int
    credits_total_after: int
    credits_used_before: int
    credits_used_after: int
    bonus_before: int
    bonus_after: int
    reason: str | None
    grant_id: str | None = Field(default=None, description="The grant this row changed "
                                 "(a grant made, expired, voided or rolled over).")

    @classmethod
    def from_core(cls, entry: instances.HistoryEntry) -> Self:
        return cls(**vars(entry))


class HistoryPage(ApiModel):
    """Ledger rows newest first; pass `nextBefore` as `before` for the next page."""

    model_config = _example(entries=[_ENTRY], nextBefore=None)
    entries: list[HistoryEntry]
    next_before: int | None = Field(description="`before` for the next page; null at the end.")

    @classmethod
    def from_core(cls, entries: list[instances.HistoryEntry], limit: int) -> Self:
        return cls(entries=[HistoryEntry.from_core(e) for e in entries],
                   next_before=entries[-1].id if len(entries) == limit else None)


class ConsumeRequest(ApiModel):
    """Charge credits once per idempotency key (plan credits first, then bonus)."""

    model_config = _config({"amount": 10, "idempotencyKey": "render-7f3a"}, forbid=True)
    # strict: "3", true and 2.0 are refused, not charged as 3, 1 and 2
    amount: int = Field(gt=0, le=1_000_000_000, strict=True,
                        description="Credits to charge (a JSON integer).")
    idempotency_key: str = Field(min_length=1, max_length=200, pattern=NO_NUL, description=(
        "Unique per logical request: a retry with the same key is charged once and gets "
        "the first answer back."))


class Consumption(ApiModel):
    """The result of a consume; `replayed` when the key was seen before."""

    model_config = _example(instanceId="9f1c2b7e-0d3a-4c55-8a61-3f4f3c1d2e10", amount=10,
                            fromPlan=10, fromBonus=0, creditsRemaining=4870, replayed=False)
    instance_id: str
    amount: int
    from_plan: int
    from_bonus: int
    credits_remaining: int
    replayed: bool

    @classmethod
    def from_core(cls, result: usage.Consumption) -> Self:
        return cls(**vars(result))


_RESERVATION = {"reservationId": "rsv_Xq3vJ0c2pW8bN5mK1tR7yZ4a", "instanceId":
                "9f1c2b7e-0d3a-4c55-8a61-3f4f3c1d2e10", "amount": 50, "status": "held",
                "committedAmount": None, "createdAt": _T0, "expiresAt": "2026-01-10T12:15:00Z",
                "settledAt": None, "replayed": False}


class ReserveRequest(ApiModel):
    """Hold credits for a job: nobody else can spend them until it commits or releases, or
    `ttl` passes."""

    model_config = _config({"amount": 50, "idempotencyKey": "render-7f3a", "ttl": 900},
                           forbid=True)
    amount: int = Field(gt=0, le=1_000_000_000, strict=True,
                        description="Credits to hold (a JSON integer).")
    idempotency_key: str = Field(min_length=1, max_length=200, pattern=NO_NUL, description=(
        "Unique per job: a retry with the same key answers the first hold."))
    ttl: int = Field(default=900, ge=1, le=86_400, strict=True, description=(
        "Seconds until the hold expires by itself (its credits are freed)."))


class CommitRequest(ApiModel):
    """Charge what the job really used (at most what is held; omit `amount` for all)."""

    model_config = _config({"amount": 42}, {}, forbid=True)
    amount: int | None = Field(default=None, ge=0, le=1_000_000_000, strict=True,
                               description="Credits to charge; the rest is freed.")


class Reservation(ApiModel):
    """A hold: `held`, then `committed` (charged `committedAmount`), `released`, or
    `expired` (past its TTL: freed by the loop)."""

    model_config = _example(**_RESERVATION)
    reservation_id: str
    instance_id: str
    amount: int
    status: enums.ReservationStatus
    committed_amount: int | None
    created_at: dt.datetime
    expires_at: dt.datetime
    settled_at: dt.datetime | None
    replayed: bool = Field(description="This answer repeats an earlier one (the same "
                                       "idempotency key, or a second commit or release).")

    @classmethod
    def from_core(cls, found: reservations.Reservation) -> Self:
        return cls(reservation_id=found.id, instance_id=found.instance_id,
                   amount=found.amount, status=found.status,
                   committed_amount=found.committed_amount, created_at=found.created_at,
                   expires_at=found.expires_at, settled_at=found.settled_at,
                   replayed=found.replayed)


# -- admin ------------------------------------------------------------------------------

_ADMIN_INSTANCE = {
    **_CREDITS, "driftReason": None, "desiredPlan": "pro",
    "desiredCreditsTotal": 5000, "subscriptionStatus": "active", "expiresAt": None,
    "createdAt": _T0, "updatedAt": _T0}


class AdminInstance(Credits):
    """An instance with what its subscription says it should have."""

    model_config = _example(**_ADMIN_INSTANCE)
    drift_reason: str | None = Field(description="Why it is not in sync (null when it is).")
    desired_plan: str
    desired_credits_total: int | None = Field(
        description="Null when the desired plan is missing from the catalog.")
    subscription_status: enums.SubscriptionStatus | None
    expires_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def from_report(cls, report: reports.InstanceReport) -> Self:
        return cls(**vars(report))


class InstancePage(ApiModel):
    model_config = _example(items=[_ADMIN_INSTANCE], nextCursor=None)
    items: list[AdminInstance]
    next_cursor: str | None = Field(description="`cursor` for the next page; null at the end.")


class InstanceDetail(ApiModel):
    """One instance and its newest ledger rows."""

    model_config = _example(instance=_ADMIN_INSTANCE, history=[_ENTRY], nextBefore=None)
    instance: AdminInstance
    history: list[HistoryEntry]
    next_before: int | None


class AdjustRequest(ApiModel):
    """Grant (positive) or take back (negative) bonus credits; the reconciler never touches
    them."""

    model_config = _config({"bonusCreditsDelta": 500,
                            "reason": "support ticket 1234: compensation"}, forbid=True)
    bonus_credits_delta: int = Field(ge=-1_000_000_000, le=1_000_000_000,
                                     description="Non-zero change to the bonus credits.")
    reason: str = Field(min_length=1, max_length=500, pattern=r"^[^\x00]*[^\x00\s][^\x00]*$",
                        description="Why; recorded in the ledger.")


class AdjustResult(ApiModel):
    model_config = _example(entry={**_ENTRY, "kind": "adjustment", "actor": "admin",
                                   "planBefore": "pro", "creditsTotalBefore": 5000,
                                   "creditsUsedAfter": 0, "bonusAfter": 500,
                                   "reason": "support ticket 1234: compensation"},
                            credits={**_CREDITS, "bonusCredits": 500})
    entry: HistoryEntry
    credits: Credits


# -- grants ------------------------------------------------------------------------------

_GRANT = {"grantId": "grt_Q2hhbmdlTWVQbGVhc2U", "amount": 500, "remaining": 320,
          "priority": 50, "expiresAt": "2026-03-01T00:00:00Z", "status": "live",
          "reason": "spring promotion", "source": "admin", "createdAt": _T0, "endedAt": None}


class Grant(ApiModel):
    """Credits granted beside the plan: spent after the plan credits, by `priority` (lower
    first), then soonest `expiresAt` (none last), then oldest."""

    model_config = _example(**_GRANT)
    grant_id: str
    amount: int = Field(description="What was granted.")
    remaining: int = Field(description="What is left (0 once spent, expired or voided).")
    priority: int = Field(description="0 to 100; lower is spent first.")
    expires_at: dt.datetime | None = Field(description="When the remainder leaves by itself "
                                                       "(null: never).")
    status: enums.GrantStatus
    reason: str
    source: enums.GrantSource = Field(description="`rollover`: unused plan credits of an "
                                                  "ended period.")
    created_at: dt.datetime
    ended_at: dt.datetime | None

    @classmethod
    def from_core(cls, grant: grants.Grant) -> Self:
        return cls(grant_id=grant.id, amount=grant.amount, remaining=grant.remaining,
                   priority=grant.priority, expires_at=grant.expires_at,
                   status=enums.GrantStatus(grant.status), reason=grant.reason,
                   source=enums.GrantSource(grant.source), created_at=grant.created_at,
                   ended_at=grant.ended_at)


class GrantList(ApiModel):
    """An instance's live grants in spending order, then its newest ended ones."""

    model_config = _example(grants=[_GRANT])
    grants: list[Grant]


class GrantResult(Grant):
    """The grant made (or, for a repeated `idempotencyKey`, the one made the first time)."""

    model_config = _example(**_GRANT, replayed=False)
    replayed: bool = Field(default=False, description="The key was seen before: nothing new "
                                                      "was granted.")


class GrantRequest(ApiModel):
    """Grant credits: `priority` 0 to 100 (lower spent first, default 50), `expiresAt`
    optional (in the future). A repeated `idempotencyKey` grants once; with different
    parameters it is a 409."""

    model_config = _config({"amount": 500, "reason": "spring promotion",
                            "expiresAt": "2026-03-01T00:00:00Z", "priority": 40,
                            "idempotencyKey": "promo-2026-spring"}, forbid=True)
    amount: int = Field(ge=1, le=grants.MAX_AMOUNT, strict=True)
    reason: str = Field(min_length=1, max_length=grants.MAX_REASON,
                        pattern=r"^[^\x00]*[^\x00\s][^\x00]*$",
                        description="Why; recorded in the ledger.")
    expires_at: dt.datetime | None = Field(default=None, description="With a time zone.")
    priority: int = Field(default=grants.DEFAULT_PRIORITY, ge=0, le=100, strict=True)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=grants.MAX_KEY,
                                        pattern=NO_NUL)


class VoidRequest(ApiModel):
    """Void a live grant: its remainder leaves, with a `grant_voided` ledger row."""

    model_config = _config({"reason": "granted by mistake"}, forbid=True)
    reason: str | None = Field(default=None, max_length=grants.MAX_REASON, pattern=NO_NUL)


class SyncRequest(ApiModel):
    """Converge `instanceIds`, or every instance with `all: true`; `dryRun` writes nothing."""

    model_config = _config(
        {"instanceIds": ["9f1c2b7e-0d3a-4c55-8a61-3f4f3c1d2e10"], "dryRun": True},
        {"all": True, "dryRun": False}, forbid=True)
    model_config["json_schema_extra"] = {
        **model_config["json_schema_extra"], **ONE_SCOPE}  # type: ignore[dict-item]
    instance_ids: list[InstanceId] | None = Field(default=None, min_length=1,
                                                  max_length=10_000)
    all: bool = False
    dry_run: bool = False

    @model_validator(mode="after")
    def _one_scope(self) -> Self:
        check_scope(self.all, self.instance_ids, "sync")
        return self


_CHANGE = {"instanceId": "9f1c2b7e-0d3a-4c55-8a61-3f4f3c1d2e10", "before": _NUMBERS_BEFORE,
           "after": _NUMBERS_AFTER,
           "steps": [{"kind": "drift_repair", "reason": "plan free, subscription says pro",
                      "before": _NUMBERS_BEFORE, "after": _NUMBERS_AFTER}]}


class InstanceChange(ApiModel):
    """Everything a sync did (or would do) to one instance."""

    model_config = _example(**_CHANGE)
    instance_id: str
    before: Numbers
    after: Numbers
    steps: list[Step]

    @classmethod
    def from_core(cls, change: policy.Change) -> Self:
        return cls(instance_id=change.instance_id, before=Numbers.from_core(change.before),
                   after=Numbers.from_core(change.after),
                   steps=[Step.from_core(step) for step in change.steps])


class SyncResult(ApiModel):
    """What a sync run found and did (a dry run: would do)."""

    model_config = _example(runId="5d1e0c2b-3a4f-4b6c-9d8e-7f6a5b4c3d2e", dryRun=True,
                            scanned=1, drifted=1, repaired=1, failed=0, planMissing=0,
                            changes=[_CHANGE], changesTruncated=False)
    run_id: str
    dry_run: bool
    scanned: int
    drifted: int
    repaired: int = Field(description="Instances changed (a dry run: would change).")
    failed: int
    plan_missing: int
    changes: list[InstanceChange]
    changes_truncated: bool = Field(description="More instances changed than are listed.")

    @classmethod
    def from_core(cls, summary: convergence.Summary) -> Self:
        return cls(run_id=summary.run_id, dry_run=summary.dry_run, scanned=summary.scanned,
                   drifted=summary.drifted, repaired=summary.repaired, failed=summary.failed,
                   plan_missing=summary.plan_missing,
                   changes=[InstanceChange.from_core(c) for c in summary.changes],
                   changes_truncated=summary.repaired > len(summary.changes))


_EVENT = {"eventId": "3f0e1d2c-5b6a-4c7d-8e9f-0a1b2c3d4e5f",
          "instanceId": "9f1c2b7e-0d3a-4c55-8a61-3f4f3c1d2e10", "eventType": "PaidPlanPurchased",
          "productId": "pro", "operationTime": _T0, "receivedAt": _T0, "status": "applied",
          "attempts": 1, "lastError": None, "nextAttemptAt": None, "appliedAt": _T0,
          "payload": {"vendorProductId": "pro", "cycle": "MONTHLY",
                      "operationTimeStamp": "2026-01-10T12:00:00.000Z"}}


class WebhookEvent(ApiModel):
    """One inbox row."""

    model_config = _example(**_EVENT)
    event_id: str
    instance_id: str
    event_type: str
    product_id: str | None
    operation_time: dt.datetime
    received_at: dt.datetime
    status: WebhookStatus
    attempts: int
    last_error: str | None
    next_attempt_at: dt.datetime | None
    applied_at: dt.datetime | None
    payload: dict[str, Any] = Field(description="The event's own fields, as delivered.")

    @classmethod
    def from_report(cls, report: reports.WebhookReport) -> Self:
        return cls(**vars(report))


_COUNTS = {"applied": 1, "duplicate": 0, "stale": 0, "ignored": 0, "quarantined": 0,
           "failed": 0, "pending": 0}


class WebhookPage(ApiModel):
    model_config = _example(items=[_EVENT], counts=_COUNTS, nextCursor=None)
    items: list[WebhookEvent]
    counts: dict[str, int] = Field(description="All inbox events by status.")
    next_cursor: str | None


class ReplayResult(ApiModel):
    model_config = _example(eventId=_EVENT["eventId"], status="applied")
    event_id: str
    status: WebhookStatus


_DELIVERY = {"webhookId": "msg_01JH2Q6Z7R8S9T0V1W2X3Y4Z5A", "seq": 41,
             "instanceId": "9f1c2b7e-0d3a-4c55-8a61-3f4f3c1d2e10", "type": "credits.low",
             "status": "delivered", "attempts": 1, "createdAt": _T0, "nextAttemptAt": None,
             "lastError": None, "deliveredAt": _T0,
             "payload": {"type": "credits.low", "timestamp": _T0,
                         "data": {"instanceId": "9f1c2b7e-0d3a-4c55-8a61-3f4f3c1d2e10",
                                  "ledgerId": 812, "threshold": 20, "thresholdCredits": 200}}}
_DELIVERY_COUNTS = {"pending": 0, "delivered": 1, "dead": 0}


class Delivery(ApiModel):
    """One event to the app and how its delivery stands."""

    model_config = _example(**_DELIVERY)
    webhook_id: str = Field(description="The `webhook-id` header: the same on every retry.")
    seq: int = Field(description="Order of the events (an instance's go out in this order).")
    instance_id: str
    type: AppEvent
    status: DeliveryStatus
    attempts: int
    created_at: dt.datetime
    next_attempt_at: dt.datetime | None
    last_error: str | None
    delivered_at: dt.datetime | None
    payload: dict[str, Any] = Field(description="The body sent, as signed.")

    @classmethod
    def from_core(cls, found: outbox.Delivery) -> Self:
        fields = {k: v for k, v in vars(found).items() if k != "id"}
        return cls(webhook_id=found.id, **fields)


class DeliveryPage(ApiModel):
    model_config = _example(items=[_DELIVERY], counts=_DELIVERY_COUNTS, nextBefore=None)
    items: list[Delivery]
    counts: dict[str, int] = Field(description="All events to the app by status.")
    next_before: int | None = Field(description="Pass as `before` for the next page.")


class RepairsOnDay(ApiModel):
    model_config = _example(day="2026-01-10", repairs=3)
    day: dt.date
    repairs: int


class PlanCreditsOnDay(ApiModel):
    model_config = _example(day="2026-01-10", plan="pro", credits=1200)
    day: dt.date
    plan: str
    credits: int


class AuditDay(ApiModel):
    day: dt.date
    checked: int
    disagreed: int
    healed: int
    errors: int

    @classmethod
    def from_core(cls, found: reports.AuditDay) -> Self:
        return cls(day=found.day, checked=found.checked, disagreed=found.disagreed,
                   healed=found.healed, errors=found.errors)


class Unanswered(ApiModel):
    instance_id: str
    checked_at: dt.datetime | None
    error: str


class AuditOverview(ApiModel):
    """The marketplace audit: its last run, per day, and the instances it could not check."""

    last_run_at: dt.datetime | None
    last: AuditDay | None
    per_day: list[AuditDay]
    never_checked: int = Field(description="Installed instances never checked yet (first "
                                           "in line).")
    unanswered_count: int = Field(description="Instances whose last check the marketplace "
                                              "could not answer.")
    unanswered: list[Unanswered]

    @classmethod
    def from_core(cls, found: reports.AuditOverview) -> Self:
        return cls(
            last_run_at=found.last_run_at,
            last=AuditDay.from_core(found.last) if found.last else None,
            per_day=[AuditDay.from_core(d) for d in found.per_day],
            never_checked=found.never_checked, unanswered_count=found.unanswered_count,
            unanswered=[Unanswered(instance_id=u.instance_id, checked_at=u.checked_at,
                                   error=u.error) for u in found.unanswered])


class Stats(ApiModel):
    """For the admin dashboard: drift repairs per day, the inbox, usage by plan per day."""

    model_config = _example(since="2025-12-12T00:00:00Z", until=_T0, instances=1200,
                            repairsPerDay=[{"day": "2026-01-10", "repairs": 3}],
                            webhooksByStatus=_COUNTS,
                            creditsUsedByPlanPerDay=[
                                {"day": "2026-01-10", "plan": "pro", "credits": 1200}])
    since: dt.datetime
    until: dt.datetime
    instances: int
    repairs_per_day: list[RepairsOnDay] = Field(
        description="Drift repairs (credits that differed from the plan and were fixed).")
    webhooks_by_status: dict[str, int]
    credits_used_by_plan_per_day: list[PlanCreditsOnDay]
    audit: AuditOverview

    @classmethod
    def from_core(cls, stats: reports.Stats) -> Self:
        return cls(
            since=stats.since, until=stats.until, instances=stats.instances,
            repairs_per_day=[RepairsOnDay(day=d.day, repairs=d.count)
                             for d in stats.repairs_per_day],
            webhooks_by_status=stats.webhooks_by_status,
            credits_used_by_plan_per_day=[
                PlanCreditsOnDay(day=d.day, plan=d.plan, credits=d.credits)
                for d in stats.credits_used_by_plan_per_day],
            audit=AuditOverview.from_core(stats.audit))


class Policy(ApiModel):
    """The transition policy every process converges with, and where it came from."""

    model_config = _example(usageOnPlanChange="Preserve", expiryGracePeriod="1d",
                            expiryGracePeriodSeconds=86400, lowCreditThresholds="20%,5%",
                            source="CreditSync creditsync/creditsync", updatedAt=_T0)
    usage_on_plan_change: enums.UsagePolicy = Field(
        description="What a purchase or plan change does to the period's usage.")
    expiry_grace_period: str = Field(description="How long a cancelled plan outlives its "
                                                 "expiry, as a duration (`0s`, `1d`).")
    expiry_grace_period_seconds: int
    low_credit_thresholds: str = Field(description="The `credits.low` thresholds, percentages "
                                                   "of the period's allocation (`none`: no "
                                                   "`credits.low` events).")
    source: str = Field(description="Who wrote it: a `CreditSync` (namespace/name), the "
                                    "environment of `creditsync run`, or the built-in "
                                    "defaults.")
    updated_at: dt.datetime | None

    @classmethod
    def from_core(cls, found: policy_store.Effective) -> Self:
        return cls(
            usage_on_plan_change=found.policy.usage_on_plan_change,
            expiry_grace_period=config.format_duration(found.policy.expiry_grace_period),
            expiry_grace_period_seconds=int(found.policy.expiry_grace_period.total_seconds()),
            low_credit_thresholds=thresholds.text_of(found.policy.low_credit_thresholds),
            source=found.source, updated_at=found.updated_at)


# -- service keys -----------------------------------------------------------------------

_KEY = {"id": "4f2a9c1e0b7d3a65", "name": "render-worker",
        "scopes": ["credits:read", "credits:consume"], "createdAt": _T0,
        "lastUsedAt": None, "revokedAt": None}


class CreateKeyRequest(ApiModel):
    """A service key for an app's backend; the key is answered once."""

    model_config = _config({"name": "render-worker",
                            "scopes": ["credits:read", "credits:consume"]}, forbid=True)
    name: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00]*[^\x00\s][^\x00]*$",
                      description="Who uses it (shown in `keys list`).")
    scopes: list[enums.Scope] = Field(min_length=1, max_length=3)


class CreatedKey(ApiModel):
    """The new key: `key` is shown this once (only a hash is stored)."""

    model_config = _example(id=_KEY["id"], key="csk_4f2a9c1e0b7d3a65_<secret>",
                            name=_KEY["name"], scopes=_KEY["scopes"])
    id: str
    key: str
    name: str
    scopes: list[enums.Scope]

    @classmethod
    def from_core(cls, created: keys.Created) -> Self:
        return cls(id=created.id, key=created.key, name=created.name,
                   scopes=list(created.scopes))


class ServiceKey(ApiModel):
    """A service key (never its secret)."""

    model_config = _example(**_KEY)
    id: str
    name: str
    scopes: list[enums.Scope]
    created_at: dt.datetime
    last_used_at: dt.datetime | None = Field(description="Recorded at most once a minute.")
    revoked_at: dt.datetime | None

    @classmethod
    def from_core(cls, found: keys.ServiceKey) -> Self:
        return cls(id=found.id, name=found.name,
                   scopes=[s for s in enums.Scope if s in found.scopes],
                   created_at=found.created_at, last_used_at=found.last_used_at,
                   revoked_at=found.revoked_at)


class ServiceKeyList(ApiModel):
    model_config = _example(items=[_KEY])
    items: list[ServiceKey]
