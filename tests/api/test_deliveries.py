"""The admin API's view of events to the app: list by status, replay a dead one."""

from __future__ import annotations

import datetime as dt

from creditsync import delivery, outbox, runner
from tests.api.conftest import Api
from tests.support.receiver import AppReceiver


def test_deliveries_are_listed_by_status_and_a_dead_one_is_replayed(api: Api) -> None:
    instance = api.instance("low")
    api.install(instance)
    consumed = api.http.post("/api/credits/consume", headers=api.auth(instance),
                             json={"amount": 85, "idempotencyKey": "k"})
    assert consumed.status_code == 200, consumed.text
    page = api.http.get("/api/admin/deliveries", headers=api.admin,
                        params={"instanceId": instance}).json()
    (item,) = page["items"]
    assert (item["type"], item["status"], item["attempts"]) == ("credits.low", "pending", 0)
    assert item["payload"]["data"]["threshold"] == 20
    assert page["nextBefore"] is None
    assert set(page["counts"]) == {"pending", "delivered", "dead"}

    with AppReceiver(failing={instance}) as app:
        client = delivery.Client(app.url, app.secret)
        try:
            now = dt.datetime.now(dt.UTC)
            for _ in range(outbox.MAX_ATTEMPTS):  # every attempt fails: dead
                outbox.deliver_due(api.engine, client, now)
                now += dt.timedelta(hours=2)
            dead = api.http.get("/api/admin/deliveries", headers=api.admin,
                                params={"status": "dead", "instanceId": instance}).json()
            assert [(d["webhookId"], d["lastError"]) for d in dead["items"]] == [
                (item["webhookId"], "HTTP 503")]
            replay = api.http.post(f"/api/admin/deliveries/{item['webhookId']}/replay",
                                   headers=api.admin)
            assert replay.status_code == 200, replay.text
            assert (replay.json()["status"], replay.json()["attempts"]) == ("pending", 0)
            again = api.http.post(f"/api/admin/deliveries/{item['webhookId']}/replay",
                                  headers=api.admin)
            assert (again.status_code, again.json()["error"]) == (409, "delivery_pending")
            app.failing = set()
            outbox.deliver_due(api.engine, client, now)
        finally:
            client.close()
    assert [a.webhook_id for a in app.accepted if a.webhook_id == item["webhookId"]] == [
        item["webhookId"]]
    delivered = api.http.get("/api/admin/deliveries", headers=api.admin,
                             params={"status": "delivered", "instanceId": instance}).json()
    assert [d["webhookId"] for d in delivered["items"]] == [item["webhookId"]]


def test_bad_delivery_requests_get_clear_4xx(api: Api) -> None:
    unknown = api.http.post("/api/admin/deliveries/msg_nope/replay", headers=api.admin)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "delivery_not_found")
    bad = api.http.get("/api/admin/deliveries", headers=api.admin, params={"status": "lost"})
    assert (bad.status_code, bad.json()["message"]) == (
        422, "query.status: Input should be 'pending', 'delivered' or 'dead' (see /docs for "
             "the expected request)")
    nobody = api.http.get("/api/admin/deliveries")
    assert nobody.status_code == 401


def test_deliveries_page_newest_first(api: Api) -> None:
    instance = api.instance("pages")
    api.install(instance)
    for n, amount in enumerate((85, 11, 4)):  # low 20%, low 5%, depleted
        api.http.post("/api/credits/consume", headers=api.auth(instance),
                      json={"amount": amount, "idempotencyKey": f"k{n}"})
    first = api.http.get("/api/admin/deliveries", headers=api.admin,
                         params={"instanceId": instance, "limit": 2}).json()
    assert [d["type"] for d in first["items"]] == ["credits.depleted", "credits.low"]
    rest = api.http.get("/api/admin/deliveries", headers=api.admin,
                        params={"instanceId": instance, "limit": 2,
                                "before": first["nextBefore"]}).json()
    assert [d["payload"]["data"]["threshold"] for d in rest["items"]] == [20]
    assert rest["nextBefore"] is None


def test_the_standalone_loop_delivers_and_metrics_count_the_outcomes(local_api: Api) -> None:
    instance = local_api.instance("loop")
    local_api.install(instance)
    local_api.http.post("/api/credits/consume", headers=local_api.auth(instance),
                        json={"amount": 100, "idempotencyKey": "all"})  # low 20, 5, depleted
    metrics = local_api.http.app.state.creditsync.metrics
    with AppReceiver() as app:
        client = delivery.Client(app.url, app.secret)
        loop = runner.Runner(local_api.engine, dt.timedelta(hours=1), deliverer=client)
        loop.on_deliver.append(metrics.observe_deliveries)
        try:
            assert loop.deliver() == {"delivered": 3, "retry": 0, "dead": 0}
        finally:
            client.close()
    assert [a.payload["type"] for a in app.accepted if a.payload] == [
        "credits.low", "credits.low", "credits.depleted"]
    text = local_api.http.get("/metrics").text
    assert 'creditsync_app_event_deliveries_total{outcome="delivered"} 3.0' in text
    assert 'creditsync_app_events{status="delivered"} 3.0' in text
