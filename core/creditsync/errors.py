"""The core's one exception hierarchy: every error a caller can act on is a `CreditsyncError`.

Each kind says what went wrong in its message (and what to do); the API maps the kinds to
HTTP answers in one place (`creditsync_api.errors`), the CLI prints the message. None of them
is a `ValueError`, so a bug that raises one is never mistaken for bad input.
"""

from __future__ import annotations


class CreditsyncError(Exception):
    """Base of every error the core raises on purpose; `code` names it for machines."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(CreditsyncError):
    """A setting is missing or malformed; the message says which and what to do."""

    code = "misconfigured"


class CatalogError(CreditsyncError):
    """The plan catalog is invalid or empty; the message names the plan and the problem."""

    code = "catalog_unavailable"


class InvalidRequest(CreditsyncError):
    """The caller's parameters are wrong (e.g. a non-positive amount, no reason)."""

    code = "invalid_request"


class NotFound(CreditsyncError):
    """The thing asked for does not exist."""

    code = "not_found"


class UnknownInstance(NotFound):
    """No instance with that id has been provisioned."""

    code = "instance_not_found"

    def __init__(self, instance_id: str) -> None:
        super().__init__(
            f"instance {instance_id} is not provisioned: call POST /api/provision first")
        self.instance_id = instance_id


class Conflict(CreditsyncError):
    """The request contradicts the current state."""

    code = "conflict"


class NotReplayable(Conflict):
    """Replaying an applied event would apply it twice."""

    code = "not_replayable"


class IdempotencyConflict(Conflict):
    """An idempotency key was used before with other parameters."""

    code = "idempotency_key_reused"

    def __init__(self, key: str, first_amount: int, amount: int) -> None:
        super().__init__(
            f"idempotencyKey {key!r} was first used with amount {first_amount}, not {amount}: "
            "use a new key for a different request")
        self.key = key
        self.first_amount = first_amount
        self.amount = amount


class InsufficientCredits(CreditsyncError):
    """The instance has fewer credits left than asked for."""

    code = "insufficient_credits"

    def __init__(self, instance_id: str, requested: int, remaining: int) -> None:
        super().__init__(
            f"instance {instance_id} has {remaining} credits left, {requested} were asked for:"
            " upgrade the plan or wait for the monthly reset")
        self.requested = requested
        self.remaining = remaining


class RateLimited(CreditsyncError):
    """Asked again too soon; `retry_after` is whole seconds to wait."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(CreditsyncError):
    """Something this needs is not there right now; retrying later can succeed."""

    code = "unavailable"


class DatabaseUnavailable(Unavailable):
    """The database cannot be reached; the caller should retry later."""

    code = "database_unavailable"


class SchemaOutdated(Unavailable):
    """The database's schema is not the one this version needs."""

    code = "schema_outdated"
