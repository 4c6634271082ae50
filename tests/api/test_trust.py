"""Answers that tell the truth: idempotency, who changed what, errors by kind, shared limits.

- a reused `idempotencyKey` with another amount is 409, naming the first amount;
- usage is recorded as the app's (`actor: app`), and so is a reset a consume found due;
- an empty catalog is 503 `catalog_unavailable`, not a 400 about the request;
- the Sync Credits limit lives in the database: two API replicas allow one call per window;
- the policy every process converges with is one stored row, shown by the admin API.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from creditsync import policy, policy_store
from creditsync.storage import database, models
from creditsync_api import deps, devkeys, main
from tests.api.conftest import Api, Clock, settings_for
from tests.support.database import fresh_database
from tests.support.times import T0


def provision(api: Api, instance_id: str) -> None:
    response = api.http.post("/api/provision", headers=api.auth(instance_id))
    assert response.status_code == 200, response.text


def consume(api: Api, instance_id: str, amount: object, key: str) -> tuple[int, dict[str, object]]:
    response = api.http.post("/api/credits/consume", headers=api.auth(instance_id),
                             json={"amount": amount, "idempotencyKey": key})
    return response.status_code, response.json()


def test_a_reused_idempotency_key_with_another_amount_is_a_conflict(local_api: Api) -> None:
    api = local_api
    inst = api.instance()
    provision(api, inst)
    assert consume(api, inst, 3, "render-7")[0] == 200
    status, body = consume(api, inst, 5, "render-7")
    assert status == 409
    assert body == {
        "error": "idempotency_key_reused",
        "message": "idempotencyKey 'render-7' was first used with amount 3, not 5: use a new "
                   "key for a different request",
        "firstAmount": 3, "amount": 5}
    replay = consume(api, inst, 3, "render-7")  # the same request again: its first answer
    assert replay[0] == 200
    assert replay[1]["replayed"] is True
    assert api.credits(inst)["creditsUsed"] == 3


@pytest.mark.parametrize("amount", ["3", True, 2.0, 2.5])
def test_amount_is_a_strict_integer(local_api: Api, amount: object) -> None:
    api = local_api
    inst = api.instance()
    provision(api, inst)
    status, body = consume(api, inst, amount, f"k-{amount!r}")
    assert status in (400, 422), body
    assert "amount" in str(body["message"])
    assert api.credits(inst)["creditsUsed"] == 0


def test_usage_and_the_reset_a_consume_finds_due_are_the_apps(local_api: Api) -> None:
    api = local_api
    api.clock.set(T0)
    inst = api.instance()
    provision(api, inst)
    assert consume(api, inst, 10, "first")[0] == 200
    api.clock.advance(dt.timedelta(days=40))  # the period ended; no loop ran since
    assert consume(api, inst, 7, "after-the-month")[0] == 200
    rows = [(r.kind, r.actor, r.correlation_id) for r in api.ledger(inst)]
    assert rows == [("provision", "provision", None),
                    ("usage", "app", "first"),
                    ("period_reset", "app", "after-the-month"),
                    ("usage", "app", "after-the-month")]
    assert api.credits(inst)["creditsUsed"] == 7


def test_an_empty_catalog_is_unavailable_not_a_bad_request(local_api: Api) -> None:
    api = local_api
    api.clock.set(T0)
    inst = api.instance()
    provision(api, inst)
    api.clock.advance(dt.timedelta(days=40))  # the reset is due: the catalog is read
    api.execute(models.PLANS.delete())
    status, body = consume(api, inst, 1, "k")
    assert status == 503
    assert body["error"] == "catalog_unavailable"
    assert "plans table is empty" in str(body["message"])


@contextlib.contextmanager
def replica(url: str, keys: devkeys.DevKeys, clock: Clock) -> Iterator[TestClient]:
    app = main.create_app(settings_for(url, keys))
    app.dependency_overrides[deps.get_now] = clock.now
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_replicas_allow_one_sync_per_instance_per_window(
    request: pytest.FixtureRequest, keys: devkeys.DevKeys, tmp_path: Path, backend: str,
) -> None:
    clock = Clock(T0)
    with fresh_database(request, backend, tmp_path) as url, \
            replica(url, keys, clock) as one, replica(url, keys, clock) as two:
        engine = database.create(url)
        try:
            api = Api(one, engine, keys, backend, "testclient", clock)
            inst = api.instance()
            provision(api, inst)
            auth = api.auth(inst)
            assert one.post("/api/billing/sync-credits", headers=auth).status_code == 200
            clock.advance(dt.timedelta(seconds=2))
            limited = two.post("/api/billing/sync-credits", headers=auth)
            assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
            assert limited.json()["error"] == "rate_limited"
            clock.advance(dt.timedelta(seconds=3))
            assert two.post("/api/billing/sync-credits", headers=auth).status_code == 200
            assert one.post("/api/billing/sync-credits", headers=auth).status_code == 429
        finally:
            engine.dispose()


def test_the_admin_api_shows_the_stored_policy_and_its_source(local_api: Api) -> None:
    api = local_api
    answer = api.http.get("/api/admin/policy", headers=api.admin)
    assert answer.status_code == 200
    assert answer.json() == {"usageOnPlanChange": "Reset", "expiryGracePeriod": "0s",
                             "expiryGracePeriodSeconds": 0, "lowCreditThresholds": "20%,5%",
                             "source": policy_store.DEFAULT_SOURCE, "updatedAt": None}
    with database.write(api.engine) as conn:
        policy_store.write(conn, policy.Policy("Preserve", dt.timedelta(days=1, hours=2),
                                               (5000, 250)),
                           policy_store.creditsync_source("billing", "main"), T0)
    found = api.http.get("/api/admin/policy", headers=api.admin).json()
    assert found == {"usageOnPlanChange": "Preserve", "expiryGracePeriod": "1d2h",
                     "expiryGracePeriodSeconds": 93600, "lowCreditThresholds": "50%,2.5%",
                     "source": "CreditSync billing/main",
                     "updatedAt": "2026-01-10T12:00:00Z"}


def test_a_plan_change_uses_the_stored_policy_not_the_apps_environment(
    local_api: Api,
) -> None:
    """The app was built with the default (Reset); the stored policy says Preserve."""
    api = local_api
    with database.write(api.engine) as conn:
        policy_store.write(conn, policy.Policy("Preserve"),
                           policy_store.creditsync_source("billing", "main"), T0)
    inst = api.instance()
    at = api.now() - dt.timedelta(hours=2)
    api.buy(inst, "starter", at)
    assert consume(api, inst, 40, "job")[0] == 200
    assert api.send("PaidPlanChanged", inst, product="pro",
                    at=at + dt.timedelta(hours=1))["status"] == "applied"
    credits = api.credits(inst)
    assert (credits["plan"], credits["creditsTotal"], credits["creditsUsed"]) == (
        "pro", 5000, 40)
    assert credits["inSync"] is True
