"""`/api/admin/*`: instances, adjustments, bulk sync, the webhook inbox, the events to the
app (deliveries), and stats.

Every route requires `Authorization: Bearer $CREDITSYNC_ADMIN_TOKEN`. Cursors are opaque
(base64url of the core's page key).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, cast

from fastapi import APIRouter, Depends, Path, Query

from creditsync import (
    audit,
    convergence,
    enums,
    inbox,
    instances,
    keys,
    outbox,
    policy_store,
    reports,
    usage,
)
from creditsync_api import deps, errors, schemas
from creditsync_api.deps import EngineDep, NowDep, StateDep, require_admin

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(require_admin)])

InstanceId = Annotated[str, Path(min_length=1, max_length=100, pattern=schemas.NO_NUL,
                                 description="The instance id.")]
Limit = Annotated[int, Query(ge=1, le=500, description="Items per page.")]
Cursor = Annotated[str | None, Query(max_length=500, pattern=r"^[A-Za-z0-9_-]*$",
                                     description="`nextCursor` of the previous page.")]


def _encode(key: str | None) -> str | None:
    return None if key is None else base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise _bad_cursor() from exc
    if "\x00" in key:
        raise _bad_cursor()
    return key


def _bad_cursor() -> errors.ApiError:
    return errors.ApiError(400, "bad_cursor",
                           "cursor is not one this API handed out: pass `nextCursor` from the "
                           "previous page unchanged, or omit it for the first page")


@router.get("/instances", summary="List instances", response_model=schemas.InstancePage,
            responses=errors.responses(400, 401, 503))
def list_instances(
    engine: EngineDep, now: NowDep,
    drifted: Annotated[bool | None, Query(description="Only drifted (true) or in-sync "
                                                      "(false) instances.")] = None,
    plan: Annotated[str | None, Query(max_length=100, pattern=schemas.NO_NUL,
                                      description="Applied plan id.")] = None,
    removed: Annotated[bool | None, Query(description="Only uninstalled (true) or installed "
                                                      "(false) instances.")] = None,
    q: Annotated[str | None, Query(max_length=100, pattern=schemas.NO_NUL,
                                   description="Instance id contains this "
                                               "(case-insensitive).")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> schemas.InstancePage:
    """Instances ordered by id, with actual and desired plan and credits."""
    page = reports.list_instances(engine, now=now, drifted=drifted, plan=plan,
                                  removed=removed, q=q, limit=limit, after=_decode(cursor))
    return schemas.InstancePage(
        items=[schemas.AdminInstance.from_report(item) for item in page.items],
        next_cursor=_encode(page.next_key))


@router.get("/instances/{instance_id}", summary="One instance with its history",
            response_model=schemas.InstanceDetail, responses=errors.responses(401, 404, 503))
def get_instance(
    instance_id: InstanceId, engine: EngineDep, now: NowDep,
) -> schemas.InstanceDetail:
    """The instance beside what its subscription says, and its newest 50 ledger rows."""
    report = reports.instance(engine, instance_id, now=now)
    page = schemas.HistoryPage.from_core(instances.history(engine, instance_id, limit=50), 50)
    return schemas.InstanceDetail(instance=schemas.AdminInstance.from_report(report),
                                  history=page.entries, next_before=page.next_before)


@router.get("/instances/{instance_id}/history", summary="An instance's credit history",
            response_model=schemas.HistoryPage, responses=errors.responses(401, 404, 503))
def instance_history(
    instance_id: InstanceId, engine: EngineDep, limit: Limit = 50,
    before: deps.Before = None,
) -> schemas.HistoryPage:
    """Ledger rows, newest first."""
    entries = instances.history(engine, instance_id, limit=limit, before_id=before,
                                require=True)
    return schemas.HistoryPage.from_core(entries, limit)


@router.post("/instances/{instance_id}/adjust", summary="Grant or take back bonus credits",
             response_model=schemas.AdjustResult,
             responses=errors.responses(400, 401, 404, 503))
def adjust(
    instance_id: InstanceId, body: schemas.AdjustRequest, engine: EngineDep,
    now: NowDep,
) -> schemas.AdjustResult:
    """Bonus credits are what is left on the instance's grants, spent after the plan
    credits: a positive delta is a grant without expiry, a negative one takes credits back
    from the grants in their spending order; the change and its reason go into the ledger."""
    entry = usage.adjust_bonus(engine, instance_id, body.bonus_credits_delta, body.reason,
                               now=now)
    return schemas.AdjustResult(
        entry=schemas.HistoryEntry.from_core(entry),
        credits=schemas.Credits.from_core(instances.credits(engine, instance_id, now=now)))


@router.post("/sync", summary="Converge instances (bulk, or a dry run)",
             response_model=schemas.SyncResult, responses=errors.responses(400, 401, 503))
def sync(
    body: schemas.SyncRequest, state: StateDep, engine: EngineDep,
    now: NowDep,
) -> schemas.SyncResult:
    """Converge the listed instances, or all; with `dryRun` nothing is written and the
    answer is the diff that would be applied (at most 1,000 instances listed)."""
    summary = convergence.converge(
        engine, trigger="manual", actor=enums.Actor.ADMIN,
        instance_ids=None if body.all else body.instance_ids, dry_run=body.dry_run, now=now,
        batch_size=state.settings.batch_size)
    state.metrics.observe_run(summary)
    return schemas.SyncResult.from_core(summary)


@router.get("/webhooks", summary="The webhook inbox", response_model=schemas.WebhookPage,
            responses=errors.responses(400, 401, 503))
def list_webhooks(
    engine: EngineDep,
    status: Annotated[schemas.WebhookStatus | None, Query(description="Only this status.")]
    = None,
    instance_id: Annotated[str | None, Query(alias="instanceId", max_length=100,
                                             pattern=schemas.NO_NUL,
                                             description="Only this instance's.")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> schemas.WebhookPage:
    """Events newest first, with status, attempts and last error; counts by status."""
    try:
        page = reports.list_webhooks(engine, status=status, instance_id=instance_id,
                                     limit=limit, after=_decode(cursor))
    except ValueError as exc:
        raise _bad_cursor() from exc
    return schemas.WebhookPage(
        items=[schemas.WebhookEvent.from_report(item) for item in page.items],
        counts=inbox.counts(engine), next_cursor=_encode(page.next_key))


@router.post("/webhooks/{event_id}/replay", summary="Apply an inbox event again",
             response_model=schemas.ReplayResult,
             responses=errors.responses(401, 404, 409, 503))
def replay(
    event_id: Annotated[str, Path(min_length=1, max_length=36, pattern=schemas.NO_NUL)],
    engine: EngineDep,
    now: NowDep,
) -> schemas.ReplayResult:
    """Replays a failed, quarantined, pending or ignored event (409 for the others: they
    were applied, or deliberately changed nothing)."""
    status = inbox.replay(engine, event_id, now=now)
    return schemas.ReplayResult(event_id=event_id, status=cast(schemas.WebhookStatus, status))


@router.get("/deliveries", summary="Events to the app and their delivery",
            response_model=schemas.DeliveryPage, responses=errors.responses(400, 401, 503))
def list_deliveries(
    engine: EngineDep,
    status: Annotated[schemas.DeliveryStatus | None, Query(description="Only this status.")]
    = None,
    instance_id: Annotated[str | None, Query(alias="instanceId", max_length=100,
                                             pattern=schemas.NO_NUL,
                                             description="Only this instance's.")] = None,
    limit: Limit = 50,
    before: deps.Before = None,
) -> schemas.DeliveryPage:
    """Newest first, with status (pending, delivered, dead), attempts and last error; counts
    by status."""
    page = outbox.list_deliveries(engine, status=status, instance_id=instance_id, limit=limit,
                                  before=before)
    return schemas.DeliveryPage(
        items=[schemas.Delivery.from_core(item) for item in page.items],
        counts=outbox.counts(engine), next_before=page.next_before)


@router.post("/deliveries/{webhook_id}/replay", summary="Send an event to the app again",
             response_model=schemas.Delivery, responses=errors.responses(401, 404, 409, 503))
def replay_delivery(
    webhook_id: Annotated[str, Path(min_length=1, max_length=40, pattern=schemas.NO_NUL)],
    engine: EngineDep,
    now: NowDep,
) -> schemas.Delivery:
    """A dead (or delivered) event goes out again with the same `webhook-id`, next in its
    instance's line (409 for one still pending: the loop sends it)."""
    return schemas.Delivery.from_core(outbox.replay(engine, webhook_id, now=now))


@router.get("/stats", summary="Dashboard statistics", response_model=schemas.Stats,
            responses=errors.responses(401, 503))
def stats(
    engine: EngineDep, now: NowDep,
    days: Annotated[int, Query(ge=1, le=366, description="Days back, today included.")] = 30,
) -> schemas.Stats:
    """Drift repairs per day, webhooks by status, and credits used by plan per day (UTC
    days)."""
    return schemas.Stats.from_core(reports.stats(engine, now=now, days=days))


@router.get("/policy", summary="The transition policy in force",
            response_model=schemas.Policy, responses=errors.responses(401, 503))
def get_policy(engine: EngineDep) -> schemas.Policy:
    """`usageOnPlanChange` and `expiryGracePeriod` as every process converges with them,
    and where they came from (a `CreditSync`, `creditsync run`'s environment, or the
    built-in defaults)."""
    return schemas.Policy.from_core(policy_store.current(engine))


@router.post("/audit", summary="Ask the marketplace and heal disagreements",
             response_model=schemas.AuditResult, responses=errors.responses(400, 401, 409, 503))
def run_audit(
    body: schemas.AuditRequest, state: StateDep, engine: EngineDep,
) -> schemas.AuditResult:
    """For the listed instances (or every installed one), what the marketplace's own API
    says the site pays for, beside our subscription; disagreements are healed (applied like
    a missed webhook) unless `dryRun`. 409 when the marketplace source is off (set
    `CREDITSYNC_WIX_APP_ID`)."""
    if state.marketplace is None:
        raise errors.ApiError(409, "marketplace_off",
                              "the marketplace source is off: set CREDITSYNC_WIX_APP_ID (and "
                              "CREDITSYNC_APP_SECRET) to turn it on")
    report = audit.run(engine, state.marketplace, dry_run=body.dry_run,
                       instance_ids=None if body.all else body.instance_ids)
    state.metrics.observe_audit(report)
    return schemas.AuditResult.from_core(report)


@router.get("/keys", summary="List service keys", response_model=schemas.ServiceKeyList,
            responses=errors.responses(401, 503))
def list_keys(engine: EngineDep) -> schemas.ServiceKeyList:
    """Every service key, newest first, revoked ones too (never a secret)."""
    return schemas.ServiceKeyList(
        items=[schemas.ServiceKey.from_core(found) for found in keys.list_keys(engine)])


@router.post("/keys", summary="Create a service key", response_model=schemas.CreatedKey,
             status_code=201, responses=errors.responses(400, 401, 503))
def create_key(
    body: schemas.CreateKeyRequest, engine: EngineDep, now: NowDep,
) -> schemas.CreatedKey:
    """A key for an app's backend (`Authorization: Bearer csk_…`) with these scopes; `key`
    is answered this once (only a hash is stored)."""
    return schemas.CreatedKey.from_core(keys.create(engine, body.name, body.scopes, now=now))


@router.post("/keys/{key_id}/revoke", summary="Revoke a service key",
             response_model=schemas.ServiceKey, responses=errors.responses(401, 404, 503))
def revoke_key(
    key_id: Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[0-9a-f]+$")],
    engine: EngineDep, now: NowDep,
) -> schemas.ServiceKey:
    """Refused from the next request on, by every replica (keys are looked up on every
    request). Revoking again changes nothing."""
    return schemas.ServiceKey.from_core(keys.revoke(engine, key_id, now=now))
