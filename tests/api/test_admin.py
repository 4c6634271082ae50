"""The admin API: bearer `CREDITSYNC_ADMIN_TOKEN`, instances, adjust, bulk sync, inbox, stats."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from creditsync import catalog, plans
from creditsync.storage import database, models
from tests.api.conftest import Api, iso, ms

_i = models.INSTANCES


def get(api: Api, path: str, **params: Any) -> Any:
    response = api.http.get(path, headers=api.admin, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def post(api: Api, path: str, body: dict[str, Any]) -> Any:
    response = api.http.post(path, headers=api.admin, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def make_drift(api: Api, instance_id: str) -> None:
    """The original bug: a paid instance left at the free plan's credits."""
    api.execute(_i.update().where(_i.c.instance_id == instance_id)
                .values(plan_id="free", credits_total=100))


@pytest.mark.parametrize(("header", "code"), [
    (None, "missing_admin_token"), ("Bearer wrong", "bad_admin_token"),
    ("Basic YWRtaW46YWRtaW4=", "missing_admin_token")])
def test_admin_routes_need_the_admin_token(api: Api, header: str | None, code: str) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in [("GET", "/api/admin/instances"), ("GET", "/api/admin/stats"),
                         ("GET", "/api/admin/webhooks"), ("POST", "/api/admin/sync"),
                         ("GET", "/api/admin/instances/x"),
                         ("POST", "/api/admin/instances/x/adjust"),
                         ("POST", "/api/admin/webhooks/x/replay")]:
        response = api.http.request(method, path, headers=headers, json={"all": True})
        assert response.status_code == 401, path
        assert response.json()["error"] == code


def test_an_instance_token_is_not_an_admin_token(api: Api) -> None:
    response = api.http.get("/api/admin/instances", headers=api.auth(api.instance()))
    assert response.status_code == 401
    assert response.json()["error"] == "bad_admin_token"


def test_list_instances_filters_and_pages_with_a_cursor(api: Api) -> None:
    names = ["a", "b", "c", "d", "e"]
    for name in names:
        api.install(api.instance(name))
    at = ms(api.now() - dt.timedelta(hours=1))
    api.buy(api.instance("b"), "pro", at)
    api.buy(api.instance("c"), "pro", at)
    make_drift(api, api.instance("c"))
    api.send("AppRemoved", api.instance("d"))

    page1 = get(api, "/api/admin/instances", q=api.prefix, limit=2)
    page2 = get(api, "/api/admin/instances", q=api.prefix, limit=2, cursor=page1["nextCursor"])
    page3 = get(api, "/api/admin/instances", q=api.prefix, limit=2, cursor=page2["nextCursor"])

    assert [i["instanceId"] for i in page1["items"] + page2["items"] + page3["items"]] == [
        api.instance(n) for n in names]
    assert page3["nextCursor"] is None

    def ids(**filters: Any) -> list[str]:
        found = get(api, "/api/admin/instances", q=api.prefix.upper(), **filters)["items"]
        return [item["instanceId"].removeprefix(api.prefix) for item in found]

    assert ids(drifted="true") == ["c"]
    assert ids(drifted="false") == ["a", "b", "d", "e"]
    assert ids(plan="pro") == ["b"]
    assert ids(plan="free") == ["a", "c", "d", "e"]
    assert ids(removed="true") == ["d"]
    assert ids(removed="false", drifted="false") == ["a", "b", "e"]

    drifted = get(api, "/api/admin/instances", q=api.instance("c"))["items"][0]
    assert {k: v for k, v in drifted.items() if k not in ("lastSyncedAt", "createdAt",
                                                         "updatedAt")} == {
        "instanceId": api.instance("c"), "plan": "free", "creditsTotal": 100, "bonusCredits": 0,
        "creditsUsed": 0, "creditsRemaining": 100, "creditsHeld": 0,
        "periodStart": iso(at),
        "periodEnd": drifted["periodEnd"], "inSync": False, "driftReason": "drift_repair",
        "desiredPlan": "pro", "desiredCreditsTotal": 5000, "subscriptionStatus": "active",
        "expiresAt": None}


def test_a_bad_cursor_is_400(api: Api) -> None:
    response = api.http.get("/api/admin/webhooks", headers=api.admin,
                            params={"cursor": "bm90LWEta2V5"})
    assert response.status_code == 400
    assert response.json()["error"] == "bad_cursor"


def test_one_instance_with_its_history(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    api.buy(inst, "starter", ms(api.now() - dt.timedelta(minutes=3)))

    detail = get(api, f"/api/admin/instances/{inst}")
    history = get(api, f"/api/admin/instances/{inst}/history", limit=1)

    assert detail["instance"]["plan"] == "starter"
    assert [e["kind"] for e in detail["history"]] == ["plan_change", "provision"]
    assert detail["nextBefore"] is None
    assert [e["kind"] for e in history["entries"]] == ["plan_change"]
    assert history["nextBefore"] == history["entries"][0]["id"]
    missing = api.http.get(f"/api/admin/instances/{api.instance('nope')}", headers=api.admin)
    assert (missing.status_code, missing.json()["error"]) == (404, "instance_not_found")
    missing = api.http.get(f"/api/admin/instances/{api.instance('nope')}/history",
                           headers=api.admin)
    assert (missing.status_code, missing.json()["error"]) == (404, "instance_not_found")


def test_adjust_grants_and_takes_back_bonus_credits_with_a_reason(api: Api) -> None:
    inst = api.instance()
    api.install(inst)

    granted = post(api, f"/api/admin/instances/{inst}/adjust",
                   {"bonusCreditsDelta": 500, "reason": "  ticket 1234  "})
    taken = post(api, f"/api/admin/instances/{inst}/adjust",
                 {"bonusCreditsDelta": -200, "reason": "ticket 1234 overpaid"})
    too_much = api.http.post(f"/api/admin/instances/{inst}/adjust", headers=api.admin,
                             json={"bonusCreditsDelta": -301, "reason": "oops"})
    blank = api.http.post(f"/api/admin/instances/{inst}/adjust", headers=api.admin,
                          json={"bonusCreditsDelta": 5, "reason": "   "})
    unknown = api.http.post(f"/api/admin/instances/{api.instance('nope')}/adjust",
                            headers=api.admin, json={"bonusCreditsDelta": 5, "reason": "x"})

    assert {k: granted["entry"][k] for k in ("kind", "actor", "bonusBefore", "bonusAfter",
                                             "reason")} == {
        "kind": "adjustment", "actor": "admin", "bonusBefore": 0, "bonusAfter": 500,
        "reason": "ticket 1234"}
    assert (granted["credits"]["bonusCredits"], granted["credits"]["creditsRemaining"]) == (
        500, 600)
    assert (taken["credits"]["bonusCredits"], taken["credits"]["creditsRemaining"]) == (300, 400)
    assert too_much.status_code == 400
    assert too_much.json() == {
        "error": "invalid_adjustment",
        "message": f"instance {inst} has 300 bonus credits; taking 301 would make them "
                   "negative"}
    assert blank.status_code == 422
    assert unknown.status_code == 404
    assert api.credits(inst)["bonusCredits"] == 300


def test_bulk_sync_dry_run_returns_the_diff_and_writes_nothing(api: Api) -> None:
    a, b = api.instance("a"), api.instance("b")
    at = ms(api.now() - dt.timedelta(hours=1))
    for inst in (a, b):
        api.install(inst)
        api.buy(inst, "pro", at)
        make_drift(api, inst)

    dry = post(api, "/api/admin/sync", {"instanceIds": [a, b], "dryRun": True})

    numbers = {"creditsUsed": 0, "bonusCredits": 0, "periodStart": iso(at),
               "periodEnd": dry["changes"][0]["before"]["periodEnd"]}
    change = {"before": {"plan": "free", "creditsTotal": 100, **numbers},
              "after": {"plan": "pro", "creditsTotal": 5000, **numbers}}
    assert dry == {
        "runId": dry["runId"], "dryRun": True, "scanned": 2, "drifted": 2, "repaired": 2,
        "failed": 0, "planMissing": 0, "changesTruncated": False,
        "changes": [{"instanceId": inst, **change, "steps": [
            {"kind": "drift_repair", "reason": "plan free, subscription says pro", **change}]}
            for inst in (a, b)]}
    assert api.credits(a)["creditsTotal"] == 100

    real = post(api, "/api/admin/sync", {"instanceIds": [a], "dryRun": False})

    assert (real["dryRun"], real["repaired"], [c["instanceId"] for c in real["changes"]]) == (
        False, 1, [a])
    assert api.credits(a)["creditsTotal"] == 5000
    assert api.credits(b)["creditsTotal"] == 100
    assert [r.actor for r in api.ledger(a)][-1] == "admin"


@pytest.mark.parametrize("body", [{}, {"all": True, "instanceIds": ["x"]}, {"instanceIds": []},
                                  {"all": False}, {"all": True, "extra": 1}])
def test_bulk_sync_needs_exactly_one_scope(api: Api, body: dict[str, Any]) -> None:
    response = api.http.post("/api/admin/sync", headers=api.admin, json=body)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"


def test_the_inbox_lists_by_status_and_replays(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    product = f"{api.prefix}gold"
    at = ms(api.now() - dt.timedelta(minutes=1))
    quarantined = api.buy(inst, product, at)["eventId"]

    listed = get(api, "/api/admin/webhooks", status="quarantined", instanceId=inst)
    assert [e["eventId"] for e in listed["items"]] == [quarantined]
    event = listed["items"][0]
    assert {k: event[k] for k in ("instanceId", "eventType", "productId", "operationTime",
                                  "status", "attempts", "lastError", "appliedAt")} == {
        "instanceId": inst, "eventType": "PaidPlanPurchased", "productId": product,
        "operationTime": iso(at), "status": "quarantined", "attempts": 1, "lastError": None,
        "appliedAt": None}
    assert event["payload"]["vendorProductId"] == product
    assert listed["counts"]["quarantined"] >= 1
    everything = get(api, "/api/admin/webhooks", instanceId=inst, limit=1)
    rest = get(api, "/api/admin/webhooks", instanceId=inst, limit=1,
               cursor=everything["nextCursor"])
    assert [e["eventType"] for e in everything["items"] + rest["items"]] == [
        "PaidPlanPurchased", "AppInstalled"]
    assert rest["nextCursor"] is None

    with database.write(api.engine) as conn:
        catalog.upsert(conn, plans.Plan(product, 7_000), api.now())
    replayed = post(api, f"/api/admin/webhooks/{quarantined}/replay", {})
    again = api.http.post(f"/api/admin/webhooks/{quarantined}/replay", headers=api.admin)
    unknown = api.http.post("/api/admin/webhooks/no-such-event/replay", headers=api.admin)

    assert replayed == {"eventId": quarantined, "status": "applied"}
    assert api.credits(inst)["creditsTotal"] == 7000
    assert again.status_code == 409
    assert again.json()["error"] == "not_replayable"
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "event_not_found"


def test_stats_count_repairs_webhooks_and_usage(api: Api) -> None:
    before = get(api, "/api/admin/stats", days=1)
    inst = api.instance()
    api.install(inst)
    api.buy(inst, "pro", ms(api.now() - dt.timedelta(minutes=5)))
    make_drift(api, inst)
    post(api, "/api/admin/sync", {"instanceIds": [inst]})
    for key, amount in (("a", 40), ("b", 2)):
        api.http.post("/api/credits/consume", headers=api.auth(inst),
                      json={"amount": amount, "idempotencyKey": key})

    after = get(api, "/api/admin/stats", days=1)

    today = api.now().date().isoformat()

    def on_today(rows: list[dict[str, Any]], value: str, **match: Any) -> int:
        return sum(r[value] for r in rows if r["day"] == today
                   and all(r[k] == v for k, v in match.items()))

    assert on_today(after["repairsPerDay"], "repairs") - on_today(
        before["repairsPerDay"], "repairs") == 1
    assert on_today(after["creditsUsedByPlanPerDay"], "credits", plan="pro") - on_today(
        before["creditsUsedByPlanPerDay"], "credits", plan="pro") == 42
    assert after["webhooksByStatus"]["applied"] - before["webhooksByStatus"]["applied"] == 2
    assert after["instances"] - before["instances"] == 1
    assert set(after) == {"since", "until", "instances", "repairsPerDay", "webhooksByStatus",
                          "creditsUsedByPlanPerDay", "audit"}
    assert set(after["audit"]) == {"lastRunAt", "last", "perDay", "neverChecked",
                                   "unansweredCount", "unanswered"}
