"""Operations: health, readiness, metrics, one error shape, start-up refusals, the database
going away (503, nothing lost) and coming back, and applies that fail after the store."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from creditsync import config, convergence, inbox, policy
from creditsync.storage import database, inbox_pg, schema
from creditsync_api import devkeys, main
from tests.api.conftest import Api, Server, local_app, ms, server_env, settings_for
from tests.core.helpers import hand_edit
from tests.support import waiting
from tests.support.database import fresh_database
from tests.support.postgres import PostgresCluster


def test_health_and_readiness(api: Api) -> None:
    assert api.http.get("/healthz").json() == {"status": "ok"}
    ready = api.http.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def test_one_error_shape_for_404_405_and_422(api: Api) -> None:
    missing = api.http.get("/api/nothing-here")
    wrong_method = api.http.delete("/api/billing/credits")
    invalid = api.http.get("/api/admin/instances", headers=api.admin, params={"limit": 0})

    assert (missing.status_code, missing.json()) == (404, {
        "error": "not_found", "message": "no route /api/nothing-here: see /docs for the API's "
                                         "routes"})
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "GET"
    assert wrong_method.json() == {
        "error": "method_not_allowed",
        "message": "DELETE is not allowed on /api/billing/credits; allowed: GET"}
    assert invalid.status_code == 422
    assert invalid.json() == {
        "error": "invalid_request",
        "message": "query.limit: Input should be greater than or equal to 1 (see /docs for the "
                   "expected request)"}


def test_the_openapi_documents_every_route_with_examples(api: Api) -> None:
    document = api.http.get("/openapi.json").json()
    assert api.http.get("/docs").status_code == 200
    routes = {(method.upper(), path) for path, item in document["paths"].items()
              for method in item}
    assert routes >= {
        ("POST", "/api/webhooks/billing"), ("POST", "/api/provision"),
        ("GET", "/api/billing/credits"), ("POST", "/api/billing/sync-credits"),
        ("GET", "/api/billing/history"), ("POST", "/api/credits/consume"),
        ("GET", "/api/admin/instances"), ("GET", "/api/admin/instances/{instance_id}"),
        ("GET", "/api/admin/instances/{instance_id}/history"),
        ("POST", "/api/admin/instances/{instance_id}/adjust"), ("POST", "/api/admin/sync"),
        ("GET", "/api/admin/webhooks"), ("POST", "/api/admin/webhooks/{event_id}/replay"),
        ("GET", "/api/admin/stats"), ("GET", "/healthz"), ("GET", "/readyz"),
        ("GET", "/metrics"), ("GET", "/api/billing/grants"),
        ("GET", "/api/admin/instances/{instance_id}/grants"),
        ("POST", "/api/admin/instances/{instance_id}/grants"),
        ("POST", "/api/admin/instances/{instance_id}/grants/{grant_id}/void")}
    schemas = document["components"]["schemas"]
    for name in ("Credits", "SyncCreditsResult", "HistoryPage", "ConsumeRequest",
                 "Consumption", "WebhookAck", "ErrorBody", "AdminInstance", "SyncResult",
                 "WebhookPage", "Stats", "AdjustRequest", "Grant", "GrantList", "GrantResult",
                 "GrantRequest", "VoidRequest", "Rollover"):
        assert schemas[name]["examples"], name
    assert "HTTPValidationError" not in schemas
    hook = document["paths"]["/api/webhooks/billing"]["post"]
    assert "example" in hook["requestBody"]["content"]["text/plain"]
    assert set(hook["responses"]) == {"200", "400", "401", "413", "422", "500", "503"}


def test_metrics(local_api: Api, wrong_key: Any) -> None:
    api = local_api
    inst = api.instance()
    api.install(inst)
    api.buy(inst, "pro", ms(api.now()))
    api.post(api.webhook("PaidPlanPurchased", inst, product="pro", at=ms(api.now()),
                         key=wrong_key))
    api.http.post("/api/credits/consume", headers=api.auth(inst),
                  json={"amount": 10**6, "idempotencyKey": "k"})
    api.http.post("/api/billing/sync-credits", headers=api.auth(inst))
    api.http.get("/api/billing/credits", headers=api.auth(inst, uid=None, aid="v"))
    convergence.converge(api.engine, trigger="timer", actor="timer")

    text = api.http.get("/metrics").text

    for line in [
        'creditsync_webhooks_total{event_type="AppInstalled",outcome="applied"} 1.0',
        'creditsync_webhooks_total{event_type="PaidPlanPurchased",outcome="applied"} 1.0',
        'creditsync_webhooks_total{event_type="other",outcome="rejected"} 1.0',
        'creditsync_webhook_signature_failures_total{reason="bad_signature"} 1.0',
        "creditsync_webhook_apply_seconds_count 2.0",
        'creditsync_consume_total{outcome="insufficient"} 1.0',
        'creditsync_sync_runs_total{trigger="manual"} 1.0',
        'creditsync_instance_token_failures_total{reason="anonymous_token"} 1.0',
        'creditsync_inbox_backlog{status="pending"} 0.0',
        "creditsync_drifted_instances 0.0",
        'creditsync_app_events{status="pending"} 1.0',  # the purchase's plan.changed
        'creditsync_app_events{status="dead"} 0.0',
    ]:
        assert line in text, line
    assert re.search(r'creditsync_repairs_total\{trigger="manual"\} 0\.0', text)
    assert re.search(r"creditsync_app_event_oldest_pending_seconds \d", text)
    assert "creditsync_full_scan_missed" not in text  # no full scan yet

    hand_edit(api.engine, inst, credits_total=3)  # behind creditsync's back
    convergence.full_scan(api.engine)
    assert "creditsync_full_scan_missed 1.0" in api.http.get("/metrics").text


# -- refusing to start ----------------------------------------------------------------------


def test_the_app_refuses_to_start_on_an_outdated_schema(tmp_path: Path,
                                                        keys: devkeys.DevKeys) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    app = main.create_app(settings_for(url, keys))
    with pytest.raises(schema.SchemaOutdated, match="run `creditsync db upgrade`"), \
            TestClient(app):
        pass


def test_creditsync_api_refuses_an_outdated_schema_and_missing_secrets(
    tmp_path: Path, keys: devkeys.DevKeys,
) -> None:
    url = f"sqlite:///{tmp_path}/empty.db"
    outdated = Server(["api"], server_env(url, keys), tmp_path / "outdated.log")
    assert outdated.process.wait(60) == 1
    assert "run `creditsync db upgrade`" in outdated.output()
    outdated.stop()

    env = server_env(url, keys)
    del env["CREDITSYNC_APP_SECRET"]
    no_secret = Server(["api"], env, tmp_path / "secret.log")
    assert no_secret.process.wait(60) == 1
    assert "missing secret(s): set CREDITSYNC_APP_SECRET" in no_secret.output()
    no_secret.stop()
    with pytest.raises(config.ConfigError, match="CREDITSYNC_ADMIN_TOKEN"):
        main.create_app(settings_for(url, keys).replace(admin_token=None))
    with pytest.raises(config.ConfigError, match="not a PEM public key"):
        main.create_app(settings_for(url, keys).replace(wix_public_key="nope"))


# -- failures -------------------------------------------------------------------------------


def test_an_apply_that_fails_after_the_store_still_answers_200_and_is_retried(
    local_api: Api, monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = local_api
    inst = api.instance()
    api.install(inst)
    real = policy.transition

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the instance row is locked by a migration")

    monkeypatch.setattr(policy, "transition", broken)  # used by both apply paths
    at = ms(api.now())
    answer = api.post(api.webhook("PaidPlanPurchased", inst, product="pro", at=at)).json()

    assert answer["status"] == "pending"
    (_, event) = api.inbox(inst)
    assert (event.id, event.status, event.attempts, event.last_error) == (
        answer["eventId"], "pending", 1,
        "RuntimeError: the instance row is locked by a migration")
    assert api.credits(inst)["plan"] == "free"

    monkeypatch.setattr(policy, "transition", real)
    assert inbox.retry_due(api.engine, now=api.now(), pol=policy.Policy()) == {}  # backoff
    outcomes = inbox.retry_due(api.engine, now=api.now() + dt.timedelta(seconds=6),
                               pol=policy.Policy())

    assert outcomes == {"applied": 1}
    assert api.credits(inst)["plan"] == "pro"
    assert api.buy(inst, "pro", at) == {"status": "duplicate", "eventId": answer["eventId"]}


def test_a_slow_apply_answers_pending_within_the_marketplace_deadline(
    local_api: Api, monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = local_api
    inst = api.instance()
    api.install(inst)
    release = threading.Event()
    if api.backend == "sqlite":  # the core's blocking apply, in a worker thread
        real = inbox.process

        def slow(*args: Any, **kwargs: Any) -> str:
            release.wait(10)
            return real(*args, **kwargs)

        monkeypatch.setattr(inbox, "process", slow)
    else:  # the async apply on the event loop
        real_async = inbox_pg._process

        async def slow_async(*args: Any, **kwargs: Any) -> str:
            while not release.is_set():
                await asyncio.sleep(0.01)
            return await real_async(*args, **kwargs)

        monkeypatch.setattr(inbox_pg, "_process", slow_async)
    body = api.webhook("PaidPlanPurchased", inst, product="pro", at=ms(api.now()))
    started = time.perf_counter()
    answer = api.post(body).json()
    elapsed = time.perf_counter() - started
    # answered while the apply still waits: the event was committed before the answer
    stored = [(e.id, e.status) for e in api.inbox(inst)][-1]
    release.set()

    assert answer["status"] == "pending"
    assert elapsed < 1.25
    assert stored == (answer["eventId"], "pending")
    waiting.wait_for("the apply going on past the answer", lambda: api.inbox(inst)[
        -1].status == "applied", timeout=10, every=0.05)
    assert api.credits(inst)["plan"] == "pro"


@pytest.mark.postgres
@pytest.mark.parametrize("transport", ["testclient", "uvicorn"])
def test_503_while_the_database_is_down_then_recovery(
    request: pytest.FixtureRequest, pg: PostgresCluster, keys: devkeys.DevKeys, tmp_path: Path,
    transport: str,
) -> None:
    with fresh_database(request, "postgres", tmp_path) as url:
        if transport == "testclient":
            with local_app(url, keys, "postgres") as api:
                _outage(api, pg)
            return
        server = Server(["api"], server_env(url, keys), tmp_path / "server.log")
        try:
            server.wait_ready()
            engine = database.create(url)
            with httpx.Client(base_url=server.url, timeout=30) as client:
                _outage(Api(client, engine, keys, "postgres", "uvicorn"), pg)
            engine.dispose()
        finally:
            server.stop()


def _outage(api: Api, pg: PostgresCluster) -> None:
    inst = api.instance()
    api.install(inst)
    at = ms(api.now())
    body = api.webhook("PaidPlanPurchased", inst, product="pro", at=at)
    api.engine.dispose()
    pg.stop()
    try:
        down: dict[str, Any] = {
            "webhook": api.post(body),
            "credits": api.http.get("/api/billing/credits", headers=api.auth(inst)),
            "consume": api.http.post("/api/credits/consume", headers=api.auth(inst),
                                     json={"amount": 1, "idempotencyKey": "k"}),
            "admin": api.http.get("/api/admin/instances", headers=api.admin),
            "readyz": api.http.get("/readyz"),
        }
        healthz = api.http.get("/healthz")
        metrics = api.http.get("/metrics")
    finally:
        pg.start()
    for name, response in down.items():
        assert response.status_code == 503, name
        assert response.headers["retry-after"] == "5", name
        assert response.json() == {
            "error": "database_unavailable",
            "message": "the database is unreachable; nothing was stored or changed: retry "
                       "after 5 seconds"}, name
    assert healthz.status_code == 200
    assert metrics.status_code == 200
    assert [e.event_type for e in api.inbox(inst)] == ["AppInstalled"]  # nothing acknowledged

    # the marketplace retries until the database is back
    response = waiting.wait_for("a 200 once the database is back", lambda: (
        answer := api.post(body)).status_code == 200 and answer, timeout=30)
    assert response.json()["status"] == "applied"
    assert api.credits(inst)["plan"] == "pro"
    assert api.http.get("/readyz").status_code == 200
