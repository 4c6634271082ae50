"""`GET /api/vocabulary`: the names creditsync answers with, for the pages.

Statuses, ledger kinds, actors, triggers and usage policies come from the core's enums
(`creditsync.enums`), so the pages never keep a copy of their own. Public: names only.
"""

from __future__ import annotations

from fastapi import APIRouter

from creditsync import enums
from creditsync_api import errors, schemas

router = APIRouter(prefix="/api/vocabulary", tags=["operations"])


class Vocabulary(schemas.ApiModel):
    """Every name a field of this API can hold."""

    webhook_statuses: list[enums.EventStatus]
    replayable: list[enums.EventStatus]
    backlog: list[enums.EventStatus]
    ledger_kinds: list[enums.LedgerKind]
    actors: list[enums.Actor]
    triggers: list[enums.Trigger]
    usage_policies: list[enums.UsagePolicy]
    subscription_statuses: list[enums.SubscriptionStatus]
    delivery_statuses: list[enums.DeliveryStatus]
    app_events: list[enums.AppEvent]
    reservation_statuses: list[enums.ReservationStatus]
    grant_statuses: list[enums.GrantStatus]
    grant_sources: list[enums.GrantSource]
    scopes: list[enums.Scope]


@router.get("", summary="The names this API answers with", response_model=Vocabulary,
            responses=errors.responses())
async def vocabulary() -> Vocabulary:
    """Inbox statuses (with the replayable ones and the backlog), ledger kinds, actors,
    triggers, usage policies, subscription statuses, and the events to the app with their
    delivery statuses."""
    return Vocabulary(
        webhook_statuses=list(enums.EventStatus),
        replayable=[s for s in enums.EventStatus if s in enums.REPLAYABLE],
        backlog=list(enums.BACKLOG), ledger_kinds=list(enums.LedgerKind),
        actors=list(enums.Actor), triggers=list(enums.Trigger),
        usage_policies=list(enums.UsagePolicy),
        subscription_statuses=list(enums.SubscriptionStatus),
        delivery_statuses=list(enums.DeliveryStatus), app_events=list(enums.AppEvent),
        reservation_statuses=list(enums.ReservationStatus),
        grant_statuses=list(enums.GrantStatus), grant_sources=list(enums.GrantSource),
        scopes=list(enums.Scope))
