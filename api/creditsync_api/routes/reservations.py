"""`/api/reservations/{id}/commit|release`: settle a hold (scope `credits:consume`).

Reservation ids are unguessable; an instance token may settle only its own instance's
reservations (a service key: any).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Path

from creditsync import errors as core_errors
from creditsync import reservations
from creditsync_api import errors, schemas
from creditsync_api.deps import EngineDep, NowDep, SettlerDep, StateDep

router = APIRouter(prefix="/api/reservations", tags=["app backend"])

ReservationId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$",
                                    description="`reservationId` as the hold answered it.")]


def counted(state: StateDep, action: str, done: str,
            act: Callable[[], reservations.Reservation]) -> schemas.Reservation:
    """Run a reservation's `action`, counting its outcome in `/metrics` (`replayed`, `done`,
    or the refusal's code), and answer the reservation."""
    try:
        found = act()
    except core_errors.CreditsyncError as exc:
        state.metrics.reservations.labels(action, exc.code).inc()
        raise
    state.metrics.reservations.labels(action, "replayed" if found.replayed else done).inc()
    return schemas.Reservation.from_core(found)


def _check(caller: SettlerDep, engine: EngineDep, reservation_id: str) -> None:
    if caller.instance_id is not None:  # an instance token (a service key acts on any)
        caller.check_instance(reservations.instance_of(engine, reservation_id))


@router.post("/{reservation_id}/commit", summary="Charge what the job used",
             response_model=schemas.Reservation,
             responses=errors.responses(400, 401, 403, 404, 409, 503))
def commit(
    reservation_id: ReservationId, caller: SettlerDep, state: StateDep, engine: EngineDep,
    now: NowDep, body: schemas.CommitRequest | None = None,
) -> schemas.Reservation:
    """Charges `amount` (at most what is held, 400 beyond it; omitted: all) as one `usage`
    ledger row correlated with the reservation, and frees the rest. A second commit answers
    the first (`replayed`); another amount, or a released or expired hold, is 409."""
    _check(caller, engine, reservation_id)
    amount = body.amount if body is not None else None
    return counted(state, "commit", "committed",
                   lambda: reservations.commit(engine, reservation_id, amount, now=now))


@router.post("/{reservation_id}/release", summary="Free the held credits",
             response_model=schemas.Reservation,
             responses=errors.responses(401, 403, 404, 409, 503))
def release(
    reservation_id: ReservationId, caller: SettlerDep, state: StateDep, engine: EngineDep,
    now: NowDep,
) -> schemas.Reservation:
    """Frees everything held. Releasing again (or an expired hold) answers as it is
    (`replayed`); a committed one is 409."""
    _check(caller, engine, reservation_id)
    return counted(state, "release", "released",
                   lambda: reservations.release(engine, reservation_id, now=now))
