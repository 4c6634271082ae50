"""Instance-token endpoints: provision, credits, sync-credits, history, consume.

Who is calling comes only from a verified instance token; an instance only ever sees or
changes itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
import sqlalchemy as sa

from creditsync import policy
from creditsync.storage import models
from tests.api.conftest import Api, iso, ms

_i = models.INSTANCES


def provision(api: Api, instance_id: str) -> dict[str, Any]:
    response = api.http.post("/api/provision", headers=api.auth(instance_id))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


# -- tokens ---------------------------------------------------------------------------------


def _token_cases(api: Api, instance_id: str) -> dict[str, str]:
    good = api.token(instance_id)
    signature, payload = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    swapped = base64.urlsafe_b64encode(json.dumps(
        {**claims, "instanceId": api.instance("victim")}).encode()).rstrip(b"=").decode()
    return {
        "bad_signature": f"{signature}.{swapped}",
        "token_expired": api.token(instance_id, now=api.now() - dt.timedelta(hours=25)),
        "anonymous_token": api.token(instance_id, uid=None, aid="visitor-1"),
        "malformed_token": "not-a-token",
    }


@pytest.mark.parametrize("code", ["bad_signature", "token_expired", "anonymous_token",
                                  "malformed_token"])
@pytest.mark.parametrize("where", ["header", "query"])
def test_bad_tokens_are_401_with_a_code_that_says_why(api: Api, code: str, where: str) -> None:
    inst = api.instance()
    provision(api, inst)
    token = _token_cases(api, inst)[code]
    if where == "header":
        response = api.http.get("/api/billing/credits",
                                headers={"Authorization": f"Bearer {token}"})
    else:
        response = api.http.get("/api/billing/credits", params={"instance": token})

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    answer = response.json()
    assert set(answer) == {"error", "message"}
    assert answer["error"] == code


def test_no_token_is_401_missing_token(api: Api) -> None:
    for method, path in [("POST", "/api/provision"), ("GET", "/api/billing/credits"),
                         ("POST", "/api/billing/sync-credits"), ("GET", "/api/billing/history"),
                         ("POST", "/api/credits/consume")]:
        response = api.http.request(method, path, json={"amount": 1, "idempotencyKey": "k"})
        assert response.status_code == 401, path
        assert response.json()["error"] == "missing_token"


def test_the_query_parameter_works_like_the_header(api: Api) -> None:
    inst = api.instance()
    provision(api, inst)
    by_query = api.http.get("/api/billing/credits", params={"instance": api.token(inst)})
    assert by_query.status_code == 200
    assert by_query.json()["instanceId"] == inst


def test_an_instance_can_only_see_and_change_itself(api: Api) -> None:
    me, victim = api.instance("me"), api.instance("victim")
    provision(api, me)
    api.install(victim)
    api.buy(victim, "pro", ms(api.now() - dt.timedelta(minutes=1)))
    victim_before = api.credits(victim)
    mine = api.auth(me)

    # plain-text ids are never trusted: they are ignored
    seen = api.http.get("/api/billing/credits", headers=mine,
                        params={"instanceId": victim, "instance_id": victim})
    assert seen.json()["instanceId"] == me
    spent = api.http.post("/api/credits/consume", headers=mine,
                          json={"amount": 5, "idempotencyKey": "x"})
    assert spent.json()["instanceId"] == me
    refused = api.http.post("/api/credits/consume", headers=mine,
                            json={"amount": 5, "idempotencyKey": "y", "instanceId": victim})
    assert refused.status_code == 422
    synced = api.http.post("/api/billing/sync-credits", headers=mine,
                           params={"instanceId": victim})
    assert synced.json()["after"]["instanceId"] == me
    history = api.http.get("/api/billing/history", headers=mine).json()
    assert {e["planAfter"] for e in history["entries"]} == {"free"}
    assert api.http.get("/api/admin/instances", headers=mine).status_code == 401
    # a token whose payload was switched to the victim's id fails its signature
    forged = _token_cases(api, me)["bad_signature"]
    assert api.http.get("/api/billing/credits",
                        headers={"Authorization": f"Bearer {forged}"}).status_code == 401

    assert api.credits(victim) == victim_before


# -- provision ------------------------------------------------------------------------------


def test_provision_creates_on_the_default_plan_and_is_idempotent(local_api: Api) -> None:
    api = local_api
    now = dt.datetime(2026, 5, 4, 10, 30, tzinfo=dt.UTC)
    api.clock.set(now)
    inst = api.instance()

    first = provision(api, inst)
    api.clock.advance(dt.timedelta(minutes=1))
    second = provision(api, inst)

    expected = {"instanceId": inst, "plan": "free", "creditsTotal": 100, "bonusCredits": 0,
                "creditsUsed": 0, "creditsRemaining": 100, "creditsHeld": 0,
                "periodStart": iso(now),
                "periodEnd": iso(now.replace(month=6)), "inSync": True}
    assert first == {**expected, "lastSyncedAt": iso(now)}
    assert second == {**expected, "lastSyncedAt": iso(now + dt.timedelta(minutes=1))}
    assert [r.kind for r in api.ledger(inst)] == ["provision"]


def test_provision_applies_a_purchase_that_came_first(api: Api) -> None:
    inst = api.instance()
    at = ms(api.now() - dt.timedelta(minutes=2))
    api.buy(inst, "scale", at)

    answer = provision(api, inst)

    assert (answer["plan"], answer["creditsTotal"], answer["periodStart"]) == (
        "scale", 25000, iso(at))


# -- credits, sync-credits -----------------------------------------------------------------


def test_credits_of_an_unprovisioned_instance_is_404(api: Api) -> None:
    response = api.http.get("/api/billing/credits", headers=api.auth(api.instance()))
    assert response.status_code == 404
    assert response.json() == {
        "error": "instance_not_found",
        "message": f"instance {api.instance()} is not provisioned: call POST /api/provision "
                   "first"}


def test_reads_report_drift_and_sync_credits_repairs_it(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    at = ms(api.now() - dt.timedelta(hours=1))
    api.buy(inst, "pro", at)
    # the original bug: a paid instance stuck at the free plan's 100 credits
    api.execute(_i.update().where(_i.c.instance_id == inst).values(plan_id="free",
                                                                   credits_total=100))
    drifted = api.credits(inst)
    assert (drifted["plan"], drifted["creditsTotal"], drifted["inSync"]) == ("free", 100, False)
    assert api.credits(inst)["creditsTotal"] == 100  # reads never repair

    response = api.http.post("/api/billing/sync-credits", headers=api.auth(inst))

    assert response.status_code == 200, response.text
    answer = response.json()
    numbers = {"creditsUsed": 0, "bonusCredits": 0, "periodStart": iso(at),
               "periodEnd": iso(policy.add_months(at, 1))}
    assert answer["changes"] == [{
        "kind": "drift_repair", "reason": "plan free, subscription says pro",
        "before": {"plan": "free", "creditsTotal": 100, **numbers},
        "after": {"plan": "pro", "creditsTotal": 5000, **numbers}}]
    assert {k: answer["before"][k] for k in ("plan", "creditsTotal", "inSync")} == {
        "plan": "free", "creditsTotal": 100, "inSync": False}
    assert {k: answer["after"][k] for k in ("plan", "creditsTotal", "inSync")} == {
        "plan": "pro", "creditsTotal": 5000, "inSync": True}
    assert answer["after"] == {**api.credits(inst), "lastSyncedAt": answer["after"][
        "lastSyncedAt"]}
    assert [r.kind for r in api.ledger(inst)][-1] == "drift_repair"


def test_sync_credits_is_limited_to_one_call_per_instance_every_5_seconds(api: Api) -> None:
    me, other = api.instance("me"), api.instance("other")
    provision(api, me)
    provision(api, other)

    first = api.http.post("/api/billing/sync-credits", headers=api.auth(me))
    second = api.http.post("/api/billing/sync-credits", headers=api.auth(me))
    someone_else = api.http.post("/api/billing/sync-credits", headers=api.auth(other))

    assert first.status_code == 200
    assert first.json()["changes"] == []
    assert second.status_code == 429
    assert second.headers["retry-after"] in {"4", "5"}
    assert second.json()["error"] == "rate_limited"
    assert someone_else.status_code == 200


def test_the_sync_limit_window_ends_after_5_seconds(local_api: Api) -> None:
    api = local_api
    api.clock.set(dt.datetime(2026, 4, 1, tzinfo=dt.UTC))
    inst = api.instance()
    provision(api, inst)
    assert api.http.post("/api/billing/sync-credits", headers=api.auth(inst)).status_code == 200

    api.clock.advance(dt.timedelta(seconds=3))
    limited = api.http.post("/api/billing/sync-credits", headers=api.auth(inst))
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "2")
    assert limited.json() == {"error": "rate_limited",
                              "message": "this instance was synced less than 5 seconds ago: "
                                         "retry in 2 s"}
    api.clock.advance(dt.timedelta(seconds=2))
    assert api.http.post("/api/billing/sync-credits", headers=api.auth(inst)).status_code == 200


# -- history --------------------------------------------------------------------------------


def test_history_is_newest_first_and_paginated(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    base = ms(api.now() - dt.timedelta(hours=5))
    for n, plan in enumerate(["starter", "pro", "scale"]):
        api.send("PaidPlanChanged", inst, product=plan, at=base + dt.timedelta(hours=n))

    page1 = api.http.get("/api/billing/history", headers=api.auth(inst),
                         params={"limit": 2}).json()
    page2 = api.http.get("/api/billing/history", headers=api.auth(inst),
                         params={"limit": 2, "before": page1["nextBefore"]}).json()

    assert [(e["kind"], e["planAfter"]) for e in page1["entries"]] == [
        ("plan_change", "scale"), ("plan_change", "pro")]
    assert [(e["kind"], e["planAfter"]) for e in page2["entries"]] == [
        ("plan_change", "starter"), ("provision", "free")]
    assert page2["nextBefore"] == page2["entries"][-1]["id"]
    page3 = api.http.get("/api/billing/history", headers=api.auth(inst),
                         params={"limit": 2, "before": page2["nextBefore"]}).json()
    assert page3 == {"entries": [], "nextBefore": None}
    entry = page1["entries"][0]
    assert entry == {
        "id": entry["id"], "at": entry["at"], "kind": "plan_change", "actor": "webhook",
        "correlationId": api.inbox(inst)[-1].id, "planBefore": "pro", "planAfter": "scale",
        "creditsTotalBefore": 5000, "creditsTotalAfter": 25000, "creditsUsedBefore": 0,
        "creditsUsedAfter": 0, "bonusBefore": 0, "bonusAfter": 0,
        "reason": "accepted subscription change (rev 3)", "grantId": None}


# -- consume --------------------------------------------------------------------------------


def test_consume_is_charged_once_per_idempotency_key(api: Api) -> None:
    inst = api.instance()
    provision(api, inst)
    body = {"amount": 30, "idempotencyKey": "render-1"}

    first = api.http.post("/api/credits/consume", headers=api.auth(inst), json=body)
    again = api.http.post("/api/credits/consume", headers=api.auth(inst), json=body)

    assert first.json() == {"instanceId": inst, "amount": 30, "fromPlan": 30, "fromBonus": 0,
                            "creditsRemaining": 70, "replayed": False}
    assert again.json() == {**first.json(), "replayed": True}
    assert api.credits(inst)["creditsUsed"] == 30


def test_consume_spends_plan_credits_then_bonus_and_402s_when_short(api: Api) -> None:
    inst = api.instance()
    provision(api, inst)
    api.http.post(f"/api/admin/instances/{inst}/adjust", headers=api.admin,
                  json={"bonusCreditsDelta": 25, "reason": "beta tester"})

    spent = api.http.post("/api/credits/consume", headers=api.auth(inst),
                          json={"amount": 110, "idempotencyKey": "a"})
    short = api.http.post("/api/credits/consume", headers=api.auth(inst),
                          json={"amount": 16, "idempotencyKey": "b"})

    assert spent.json() == {"instanceId": inst, "amount": 110, "fromPlan": 100,
                            "fromBonus": 10, "creditsRemaining": 15, "replayed": False}
    assert short.status_code == 402
    assert short.json() == {
        "error": "insufficient_credits",
        "message": f"instance {inst} has 15 credits left, 16 were asked for: upgrade the plan "
                   "or wait for the monthly reset",
        "creditsRemaining": 15, "requested": 16}
    assert api.credits(inst)["creditsRemaining"] == 15


@pytest.mark.parametrize("body", [{"amount": 0, "idempotencyKey": "k"},
                                  {"amount": -5, "idempotencyKey": "k"},
                                  {"amount": 5, "idempotencyKey": ""},
                                  {"amount": "five", "idempotencyKey": "k"},
                                  {"amount": 5}])
def test_consume_validates_its_body(api: Api, body: dict[str, Any]) -> None:
    inst = api.instance()
    provision(api, inst)
    response = api.http.post("/api/credits/consume", headers=api.auth(inst), json=body)
    assert response.status_code == 422
    answer = response.json()
    assert answer["error"] == "invalid_request"
    assert answer["message"].startswith("body.")
    with api.engine.connect() as conn:
        used = conn.execute(sa.select(_i.c.credits_used_month)
                            .where(_i.c.instance_id == inst)).scalar_one()
    assert used == 0
