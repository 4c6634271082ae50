"""Schemathesis over the OpenAPI document: no 5xx, and every response matches its schema.

Generated requests (valid ones, and invalid ones that must be refused with a 4xx) go to the
ASGI app in-process, on SQLite and on PostgreSQL, for every operation. They carry a valid
instance token (or the admin token on admin routes) so the handlers run, not only the
authentication in front of them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi import checks

from creditsync import enums
from creditsync import keys as creditsync_keys
from creditsync.storage import database
from creditsync_api import deps, devkeys, main, tokens, wix
from tests.api.conftest import settings_for
from tests.support.database import fresh_database

INSTANCE = "schemathesis-instance"
# Answers a schema-valid request may get: 400 for an opaque cursor this API never handed out,
# 402 when the instance has not enough credits, 404 for ids that do not exist, 409 for an
# event that cannot be replayed, 429 for the sync limit.
CONFIG = SchemathesisConfig.from_dict({"checks": {"positive_data_acceptance": {
    "expected-statuses": ["2xx", "400", "401", "402", "404", "409", "429"]}}})
NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def api_schema(request: pytest.FixtureRequest, keys: devkeys.DevKeys,
               tmp_path: Path) -> Iterator[Any]:
    with fresh_database(request, request.param, tmp_path) as url:
        app = main.create_app(settings_for(url, keys))
        app.dependency_overrides[deps.get_now] = lambda: NOW
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
        _seed(schema, keys)
        engine = database.create(url)
        try:
            service_key = creditsync_keys.create(engine, "schemathesis", list(enums.Scope),
                                                 now=NOW).key
        finally:
            engine.dispose()
        schema.service_key = service_key
        yield schema


def _seed(schema: Any, keys: devkeys.DevKeys) -> None:
    """An installed instance with a purchase, so reads find something."""
    for event_type, fields in (
        ("AppInstalled", {}),
        ("PaidPlanPurchased", wix.event_fields("PaidPlanPurchased", product="pro",
                                               at=NOW - dt.timedelta(days=1))),
    ):
        body = wix.sign_event(keys.private_key, event_type, INSTANCE, fields, now=NOW)
        case = schema["/api/webhooks/billing"]["POST"].Case(body=body, media_type="text/plain")
        response = case.call()
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["valid", "invalid"])
def test_no_server_errors_and_responses_match_the_schema(
    api_schema: Any, keys: devkeys.DevKeys, mode: GenerationMode,
) -> None:
    admin = {"Authorization": f"Bearer {keys.admin_token}"}
    instance = {"Authorization": f"Bearer {tokens.sign(keys.app_secret, INSTANCE, now=NOW)}"}
    service = {"Authorization": f"Bearer {api_schema.service_key}"}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 25

    nothing_to_invalidate = []
    for operation in operations:
        try:
            _fuzz(operation, mode, _credentials(operation.path, admin, service, instance))
        except Unsatisfiable:
            nothing_to_invalidate.append(operation.label)

    # operations without parameters, body or credentials have no invalid variant to send
    paths = api_schema.raw_schema["paths"]
    bare = [f"{method.upper()} {path}" for path, item in paths.items()
            for method, op in item.items()
            if not (op.get("parameters") or op.get("requestBody") or op.get("security"))]
    assert {"GET /healthz", "GET /readyz", "GET /metrics"} <= set(bare)
    assert sorted(nothing_to_invalidate) == ([] if mode is GenerationMode.POSITIVE
                                             else sorted(bare))


def _credentials(path: str, admin: dict[str, str], service: dict[str, str],
                 instance: dict[str, str]) -> dict[str, str]:
    """The admin token on admin routes, a service key with every scope on the app
    backend's, the instance token elsewhere."""
    if path.startswith("/api/admin"):
        return admin
    if path.startswith(("/api/instances", "/api/reservations")):
        return service
    return instance


# With invalid data, every other check still runs (no 5xx, documented status codes, answers
# matching their schema). These two would fail on purpose: unknown query parameters are
# ignored (as HTTP APIs do), and the credentials added here make a "missing header" case
# complete again. Invalid bodies and parameters being refused is asserted in the other tests.
NOT_FOR_INVALID = [checks.negative_data_rejection, checks.missing_required_header]


def _fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> None:
    excluded = NOT_FOR_INVALID if mode is GenerationMode.NEGATIVE else []

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        if mode is GenerationMode.POSITIVE:
            _integral_floats_as_integers(case)
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    check()


def _integral_floats_as_integers(case: Any) -> None:
    """JSON Schema counts 2.0 as an integer, but the API's strict integers refuse it
    (`amount` of a consume: 422), so valid cases send such values as JSON integers."""
    if isinstance(case.body, dict):
        case.body = {name: int(value) if isinstance(value, float) and value.is_integer()
                     else value for name, value in case.body.items()}
