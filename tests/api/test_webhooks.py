"""`POST /api/webhooks/billing`: every event type, duplicates, reordering, retries, refusals.

Each test runs through TestClient and a real uvicorn server, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import rsa

from creditsync import catalog, convergence, inbox, plans, policy
from creditsync.storage import database
from tests.api.conftest import Api, iso, ms

DAY = dt.timedelta(days=1)


def credits_view(instance_id: str, plan: str, total: int, *, start: dt.datetime,
                 used: int = 0, bonus: int = 0, in_sync: bool = True) -> dict[str, Any]:
    return {"instanceId": instance_id, "plan": plan, "creditsTotal": total,
            "bonusCredits": bonus, "creditsUsed": used,
            "creditsRemaining": max(total - used, 0) + bonus, "creditsHeld": 0,
            "periodStart": iso(start),
            "periodEnd": iso(policy.add_months(start, 1)), "inSync": in_sync}


def without_sync_time(view: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(view["lastSyncedAt"], str)
    return {k: v for k, v in view.items() if k != "lastSyncedAt"}


def inbox_rows(api: Api, instance_id: str) -> list[tuple[str, str, str | None]]:
    return [(r.event_type, r.status, r.product_id) for r in api.inbox(instance_id)]


def kinds(api: Api, instance_id: str) -> list[str]:
    return [row.kind for row in api.ledger(instance_id)]


def consume(api: Api, instance_id: str, amount: int, key: str) -> dict[str, Any]:
    response = api.http.post("/api/credits/consume", headers=api.auth(instance_id),
                             json={"amount": amount, "idempotencyKey": key})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def admin_view(api: Api, instance_id: str) -> dict[str, Any]:
    response = api.http.get(f"/api/admin/instances/{instance_id}", headers=api.admin)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()["instance"]
    return found


# -- every event type ----------------------------------------------------------------------


def test_install_then_purchase_converges_before_the_answer(api: Api) -> None:
    inst = api.instance()
    installed = api.send("AppInstalled", inst)
    assert installed == {"status": "applied", "eventId": installed["eventId"]}
    assert api.credits(inst)["plan"] == "free"
    at = ms(api.now() - dt.timedelta(minutes=1))

    answer = api.buy(inst, "pro", at)

    assert answer == {"status": "applied", "eventId": answer["eventId"]}
    assert without_sync_time(api.credits(inst)) == credits_view(inst, "pro", 5000, start=at)
    assert inbox_rows(api, inst) == [("AppInstalled", "applied", None),
                                     ("PaidPlanPurchased", "applied", "pro")]
    provision, change = api.ledger(inst)
    assert (provision.kind, provision.actor, provision.plan_after) == ("provision", "webhook",
                                                                       "free")
    assert (change.kind, change.actor, change.correlation_id, change.plan_before,
            change.plan_after, change.credits_total_before, change.credits_total_after) == (
        "plan_change", "webhook", answer["eventId"], "free", "pro", 100, 5000)


def test_purchase_resolves_aliases(api: Api) -> None:
    inst = api.instance()
    with database.write(api.engine) as conn:
        catalog.upsert(conn, plans.Plan(f"{api.prefix}team", 2_000,
                                        aliases=(f"{api.prefix}team-yearly",)), api.now())
    api.install(inst)
    at = ms(api.now())
    assert api.buy(inst, f"{api.prefix}team-yearly", at)["status"] == "applied"
    assert without_sync_time(api.credits(inst)) == credits_view(inst, f"{api.prefix}team",
                                                                2000, start=at)


def test_paid_plan_changed_moves_to_the_new_plan(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    first = ms(api.now() - dt.timedelta(hours=2))
    api.buy(inst, "pro", first)
    consume(api, inst, 1200, "k1")
    later = ms(api.now() - dt.timedelta(hours=1))

    answer = api.send("PaidPlanChanged", inst, product="scale", previous="pro", at=later)

    assert answer["status"] == "applied"
    # usageOnPlanChange Reset (default): a new period starts at the change
    assert without_sync_time(api.credits(inst)) == credits_view(inst, "scale", 25000,
                                                                start=later)
    assert kinds(api, inst) == ["provision", "plan_change", "usage", "plan_change"]


def test_cancellation_keeps_the_paid_plan_until_it_expires(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    bought = ms(api.now() - DAY)
    api.buy(inst, "pro", bought)
    consume(api, inst, 100, "k1")
    expires = ms(api.now() + 10 * DAY)

    answer = api.send("PaidPlanAutoRenewalCancelled", inst, product="pro",
                      at=ms(api.now() - dt.timedelta(hours=1)), expires=expires)

    assert answer["status"] == "applied"
    assert without_sync_time(api.credits(inst)) == credits_view(inst, "pro", 5000, used=100,
                                                                start=bought)
    view = admin_view(api, inst)
    assert (view["subscriptionStatus"], view["expiresAt"]) == ("cancelled", iso(expires))


def test_cancellation_after_the_paid_time_falls_back_to_the_default_plan(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    bought = ms(api.now() - 40 * DAY)
    api.buy(inst, "pro", bought)

    answer = api.send("PaidPlanAutoRenewalCancelled", inst, product="pro",
                      at=ms(api.now() - 35 * DAY), expires=ms(api.now() - DAY))

    assert answer["status"] == "applied"
    view = api.credits(inst)
    assert (view["plan"], view["creditsTotal"], view["inSync"]) == ("free", 100, True)
    assert [(r.kind, r.plan_after) for r in api.ledger(inst)][-1] == ("expiry", "free")


def test_expiry_waits_for_the_grace_period_and_needs_no_webhook(local_api: Api) -> None:
    api = local_api
    start = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    api.clock.set(start)
    inst = api.instance()
    api.install(inst)
    api.buy(inst, "pro", start)
    api.send("PaidPlanAutoRenewalCancelled", inst, product="pro", at=start + DAY,
             expires=start + 10 * DAY)
    grace = policy.Policy(expiry_grace_period=3 * DAY)

    api.clock.set(start + 12 * DAY)  # expired, but within the grace period
    assert convergence.converge(api.engine, trigger="timer", actor="timer", now=api.now(),
                                pol=grace).repaired == 0
    api.clock.set(start + 13 * DAY + dt.timedelta(seconds=1))
    summary = convergence.converge(api.engine, trigger="timer", actor="timer", now=api.now(),
                                   pol=grace)

    assert summary.repaired == 1
    view = api.credits(inst)
    assert (view["plan"], view["creditsTotal"]) == ("free", 100)


def test_plan_converted_to_paid(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    at = ms(api.now())
    assert api.send("PlanConvertedToPaid", inst, product="pro", at=at)["status"] == "applied"
    assert without_sync_time(api.credits(inst)) == credits_view(inst, "pro", 5000, start=at)


def test_plan_reactivated_clears_the_cancellation_without_resetting_usage(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    bought = ms(api.now() - 3 * DAY)
    api.buy(inst, "pro", bought)
    consume(api, inst, 250, "k1")
    api.send("PaidPlanAutoRenewalCancelled", inst, product="pro", at=ms(api.now() - 2 * DAY),
             expires=ms(api.now() + 5 * DAY))

    answer = api.send("PlanReactivated", inst, product="pro", at=ms(api.now() - DAY))

    assert answer["status"] == "applied"
    view = admin_view(api, inst)
    assert (view["subscriptionStatus"], view["expiresAt"]) == ("active", None)
    assert without_sync_time(api.credits(inst)) == credits_view(inst, "pro", 5000, used=250,
                                                                start=bought)


def test_plan_transferred_confirms_or_changes_the_plan(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    bought = ms(api.now() - 3 * DAY)
    api.buy(inst, "pro", bought)
    consume(api, inst, 10, "k1")

    same = api.send("PlanTransferred", inst, product="pro", at=ms(api.now() - 2 * DAY))
    assert same["status"] == "applied"
    assert without_sync_time(api.credits(inst)) == credits_view(inst, "pro", 5000, used=10,
                                                                start=bought)

    moved_at = ms(api.now() - DAY)
    moved = api.send("PlanTransferred", inst, product="scale", at=moved_at)
    assert moved["status"] == "applied"
    assert without_sync_time(api.credits(inst)) == credits_view(inst, "scale", 25000,
                                                                start=moved_at)


def test_app_installed_provisions_on_the_default_plan(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    view = api.credits(inst)
    assert (view["plan"], view["creditsTotal"], view["creditsRemaining"], view["inSync"]) == (
        "free", 100, 100, True)
    assert kinds(api, inst) == ["provision"]


def test_a_purchase_for_a_new_instance_has_its_credits_at_once(api: Api) -> None:
    """Only an installed app can be bought: the purchase provisions the instance, and the
    install event that may arrive after it changes nothing."""
    inst = api.instance()
    at = ms(api.now() - dt.timedelta(minutes=5))
    assert api.buy(inst, "pro", at)["status"] == "applied"
    assert without_sync_time(api.credits(inst)) == credits_view(inst, "pro", 5000, start=at)

    api.install(inst)

    assert without_sync_time(api.credits(inst)) == credits_view(inst, "pro", 5000, start=at)
    assert kinds(api, inst) == ["provision", "plan_change"]


def test_app_removed_falls_back_and_a_reinstall_gets_the_data_back(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    bought = ms(api.now() - DAY)
    api.buy(inst, "pro", bought)
    adjusted = api.http.post(f"/api/admin/instances/{inst}/adjust", headers=api.admin,
                             json={"bonusCreditsDelta": 50, "reason": "welcome gift"})
    assert adjusted.status_code == 200
    consume(api, inst, 20, "k1")

    # install and remove events carry no operationTimeStamp: the JWT's iat orders them
    removed = api.send("AppRemoved", inst, signed_at=api.now() - dt.timedelta(seconds=20))

    assert removed["status"] == "applied"
    assert without_sync_time(api.credits(inst)) == credits_view(inst, "free", 100, used=20,
                                                                bonus=50, start=bought)
    assert admin_view(api, inst)["subscriptionStatus"] == "removed"

    reinstalled = api.send("AppInstalled", inst, signed_at=api.now() - dt.timedelta(seconds=10))
    assert reinstalled["status"] == "applied"
    view = api.credits(inst)
    assert (view["plan"], view["creditsUsed"], view["bonusCredits"]) == ("free", 20, 50)
    assert kinds(api, inst) == ["provision", "plan_change", "adjustment", "usage",
                                "drift_repair"]
    again = ms(api.now() - dt.timedelta(seconds=5))
    api.buy(inst, "pro", again)
    assert without_sync_time(api.credits(inst)) == credits_view(inst, "pro", 5000, bonus=50,
                                                                start=again)


def test_an_unknown_event_type_is_stored_as_ignored(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    answer = api.send("SitePublished", inst, at=ms(api.now()))
    assert answer["status"] == "ignored"
    assert inbox_rows(api, inst)[-1] == ("SitePublished", "ignored", None)
    assert kinds(api, inst) == ["provision"]


def test_an_unknown_product_is_quarantined_then_applied_once_the_catalog_knows_it(
    api: Api,
) -> None:
    inst = api.instance()
    api.install(inst)
    product = f"{api.prefix}platinum"
    at = ms(api.now() - dt.timedelta(minutes=1))

    answer = api.buy(inst, product, at)

    assert answer["status"] == "quarantined"
    listed = api.http.get("/api/admin/webhooks", headers=api.admin,
                          params={"status": "quarantined", "instanceId": inst}).json()
    assert [(e["eventId"], e["productId"]) for e in listed["items"]] == [
        (answer["eventId"], product)]
    assert api.credits(inst)["plan"] == "free"

    with database.write(api.engine) as conn:
        catalog.upsert(conn, plans.Plan(product, 50_000), api.now())
    inbox.retry_due(api.engine, now=api.now(), pol=policy.Policy())  # what the loop runs

    assert inbox_rows(api, inst)[-1] == ("PaidPlanPurchased", "applied", product)
    assert without_sync_time(api.credits(inst)) == credits_view(inst, product, 50_000,
                                                                start=at)


# -- duplicates, reordering, retries --------------------------------------------------------


def test_a_duplicate_answers_duplicate_and_changes_nothing(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    at = ms(api.now() - dt.timedelta(minutes=1))
    body = api.webhook("PaidPlanPurchased", inst, product="pro", at=at)
    first = api.post(body).json()
    consume(api, inst, 30, "k1")
    ledger = api.ledger(inst)

    again = api.post(body)

    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "eventId": first["eventId"]}
    assert without_sync_time(api.credits(inst)) == credits_view(inst, "pro", 5000, used=30,
                                                                start=at)
    assert api.ledger(inst) == ledger
    assert inbox_rows(api, inst) == [("AppInstalled", "applied", None),
                                     ("PaidPlanPurchased", "applied", "pro")]


def test_an_older_event_arriving_late_is_stale(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    newer = ms(api.now() - dt.timedelta(hours=1))
    older = newer - dt.timedelta(hours=3)
    api.buy(inst, "scale", newer)

    late = api.send("PaidPlanChanged", inst, product="pro", previous="free", at=older)

    assert late["status"] == "stale"
    assert without_sync_time(api.credits(inst)) == credits_view(inst, "scale", 25000,
                                                                start=newer)
    assert inbox_rows(api, inst)[-1] == ("PaidPlanChanged", "stale", "pro")


def test_retries_of_the_same_event_over_two_days_are_duplicates(api: Api) -> None:
    """The marketplace retries for about two days, re-signing each delivery."""
    inst = api.instance()
    api.install(inst)
    bought = ms(api.now() - 2 * DAY)
    first = api.buy(inst, "pro", bought)
    consume(api, inst, 10, "k1")

    retried = api.buy(inst, "pro", bought)  # re-signed a day later: a new JWT
    changed_at = ms(api.now() - DAY)
    api.send("PaidPlanChanged", inst, product="scale", previous="pro", at=changed_at)
    consume(api, inst, 5, "k2")
    last_retry = api.buy(inst, "pro", bought)  # the last retry, after a newer change

    assert retried == {"status": "duplicate", "eventId": first["eventId"]}
    assert last_retry == {"status": "duplicate", "eventId": first["eventId"]}
    assert without_sync_time(api.credits(inst)) == credits_view(inst, "scale", 25000, used=5,
                                                                start=changed_at)
    assert [r.status for r in api.inbox(inst)] == ["applied", "applied", "applied"]


def test_retries_with_the_clock_moving_two_days(local_api: Api) -> None:
    api = local_api
    day0 = dt.datetime(2026, 2, 1, 9, tzinfo=dt.UTC)
    api.clock.set(day0)
    inst = api.instance()
    api.install(inst)
    first = api.buy(inst, "pro", day0)
    consume(api, inst, 40, "k1")
    for hours in (1, 9, 30, 47):
        api.clock.set(day0 + dt.timedelta(hours=hours))
        assert api.buy(inst, "pro", day0) == {"status": "duplicate",
                                              "eventId": first["eventId"]}
    assert without_sync_time(api.credits(inst)) == credits_view(inst, "pro", 5000, used=40,
                                                                start=day0)


# -- refusals ---------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(api: Api, instance_id: str) -> dict[str, Any]:
    envelope = {"eventType": "PaidPlanPurchased", "instanceId": instance_id,
                "data": json.dumps({"vendorProductId": "scale",
                                    "operationTimeStamp": "2026-01-01T00:00:00.000Z"})}
    now = int(api.now().timestamp())
    return {"data": json.dumps(envelope), "iat": now, "exp": now + 300}


def _forged(api: Api, instance_id: str, how: str, wrong_key: rsa.RSAPrivateKey) -> str:
    if how == "wrong_key":
        return api.webhook("PaidPlanPurchased", instance_id, product="scale",
                           at=ms(api.now()), key=wrong_key)
    if how == "expired":
        return api.webhook("PaidPlanPurchased", instance_id, product="scale",
                           at=ms(api.now()), signed_at=api.now() - dt.timedelta(minutes=10))
    if how == "not_yet_valid":
        return api.webhook("PaidPlanPurchased", instance_id, product="scale",
                           at=ms(api.now()), signed_at=api.now() + dt.timedelta(minutes=10))
    if how == "tampered":  # a real event for another instance, its payload swapped
        genuine = api.webhook("PaidPlanPurchased", api.instance("other"), product="free",
                              at=ms(api.now()))
        head, _, signature = genuine.split(".")
        return f"{head}.{_b64(json.dumps(_claims(api, instance_id)).encode())}.{signature}"
    if how == "alg_none":
        return jwt.encode(_claims(api, instance_id), None, algorithm="none")  # type: ignore[arg-type]
    assert how == "hs256_with_the_public_key"  # the classic key-confusion forgery
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(_claims(api, instance_id)).encode())
    mac = hmac.new(api.keys.public_pem.encode(), f"{head}.{body}".encode(), hashlib.sha256)
    return f"{head}.{body}.{_b64(mac.digest())}"


@pytest.mark.parametrize(("how", "code"), [
    ("wrong_key", "bad_signature"), ("tampered", "bad_signature"), ("expired", "token_expired"),
    ("not_yet_valid", "token_not_yet_valid"), ("alg_none", "wrong_algorithm"),
    ("hs256_with_the_public_key", "wrong_algorithm"),
])
def test_forged_and_expired_jwts_are_refused_and_nothing_is_stored(
    api: Api, wrong_key: rsa.RSAPrivateKey, how: str, code: str,
) -> None:
    inst = api.instance()
    api.install(inst)

    response = api.post(_forged(api, inst, how, wrong_key))

    assert response.status_code == 401
    answer = response.json()
    assert set(answer) == {"error", "message"}
    assert answer["error"] == code
    assert inbox_rows(api, inst) == [("AppInstalled", "applied", None)]
    assert api.credits(inst)["plan"] == "free"


def _signed(api: Api, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, api.keys.private_key, algorithm="RS256")


@pytest.mark.parametrize(("what", "status", "fragment"), [
    ("not a jwt", 400, "not a JWT"),
    ("data not json", 400, "not valid JSON"),
    ("no instance", 400, "instanceId"),
    ("time without zone", 400, "operationTimeStamp"),
    ("too large", 413, "bytes"),
])
def test_malformed_bodies_are_400(api: Api, what: str, status: int, fragment: str) -> None:
    now = int(api.now().timestamp())
    if what == "not a jwt":
        body = "hello, this is not a token"
    elif what == "data not json":
        body = _signed(api, {"data": "{not json", "iat": now})
    elif what == "no instance":
        body = _signed(api, {"data": json.dumps({"eventType": "AppInstalled"}), "iat": now})
    elif what == "time without zone":
        body = _signed(api, {"iat": now, "data": json.dumps({
            "eventType": "PaidPlanPurchased", "instanceId": api.instance(),
            "data": json.dumps({"vendorProductId": "pro",
                                "operationTimeStamp": "2026-01-01T00:00:00"})})})
    else:
        body = "x" * 70_000

    response = api.post(body)

    assert response.status_code == status
    answer = response.json()
    assert answer["error"] == ("malformed_webhook" if status == 400 else "payload_too_large")
    assert fragment in answer["message"]
    with database.read(api.engine) as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM webhook_events WHERE instance_id = "
                                      ":i"), {"i": api.instance()}).scalar_one()
    assert stored == 0
