"""The app backend's routes: service keys and scopes, routes keyed by instance id, and
reservations, through TestClient and a real uvicorn server on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from creditsync import clock, instances
from creditsync import keys as creditsync_keys
from creditsync.storage import database
from tests.api.conftest import Api, Server
from tests.support.holds import assert_holds_match
from tests.support.ledger import assert_ledger_replays

READ = ["credits:read"]
SPEND = ["credits:read", "credits:consume"]


def provision(api: Api, instance_id: str) -> None:
    response = api.http.post("/api/provision", headers=api.auth(instance_id))
    assert response.status_code == 200, response.text


def create_key(api: Api, scopes: list[str], name: str = "worker") -> dict[str, Any]:
    response = api.http.post("/api/admin/keys", headers=api.admin,
                             json={"name": name, "scopes": scopes})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def consume(api: Api, instance_id: str, headers: dict[str, str], amount: int,
            key: str) -> Any:
    return api.http.post(f"/api/instances/{instance_id}/consume", headers=headers,
                         json={"amount": amount, "idempotencyKey": key})


def reserve(api: Api, instance_id: str, headers: dict[str, str], amount: int, key: str,
            **extra: Any) -> Any:
    return api.http.post(f"/api/instances/{instance_id}/reservations", headers=headers,
                         json={"amount": amount, "idempotencyKey": key, **extra})


def test_keys_are_listed_without_secrets_and_carry_their_scopes(api: Api) -> None:
    created = create_key(api, ["credits:consume", "credits:read"], name="render worker")
    assert created["key"].startswith(f"csk_{created['id']}_")
    assert (created["name"], created["scopes"]) == ("render worker", SPEND)
    listed = api.http.get("/api/admin/keys", headers=api.admin).json()["items"]
    mine = next(k for k in listed if k["id"] == created["id"])
    assert mine == {"id": created["id"], "name": "render worker", "scopes": SPEND,
                    "createdAt": mine["createdAt"], "lastUsedAt": None, "revokedAt": None}
    assert created["key"] not in api.http.get("/api/admin/keys", headers=api.admin).text
    refused = api.http.post("/api/admin/keys", headers=api.admin,
                            json={"name": "x", "scopes": ["credits:everything"]})
    assert refused.status_code == 422
    assert api.http.get("/api/admin/keys").status_code == 401


def test_scopes_are_enforced(api: Api) -> None:
    inst = api.instance()
    provision(api, inst)
    reader = bearer(create_key(api, READ)["key"])
    answer = api.http.get(f"/api/instances/{inst}/credits", headers=reader)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["creditsRemaining"], answer.json()["creditsHeld"]) == (100, 0)
    assert api.http.get(f"/api/instances/{inst}/history", headers=reader).status_code == 200
    for refused in (consume(api, inst, reader, 1, "k"), reserve(api, inst, reader, 1, "k")):
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "missing_scope"
        assert "needs the scope credits:consume" in refused.json()["message"]
    spender = bearer(create_key(api, ["credits:consume"])["key"])
    assert api.http.get(f"/api/instances/{inst}/credits", headers=spender).status_code == 403
    assert consume(api, inst, spender, 1, "k").status_code == 200
    assert api.credits(inst)["creditsUsed"] == 1


def test_bad_unknown_and_revoked_keys_are_401(api: Api) -> None:
    inst = api.instance()
    provision(api, inst)
    created = create_key(api, SPEND)
    key = created["key"]
    url = f"/api/instances/{inst}/credits"
    assert api.http.get(url, headers=bearer(key)).status_code == 200
    wrong_secret = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    unknown = f"csk_{'0' * 16}_{key.split('_', 2)[2]}"
    for raw, code in ((wrong_secret, "bad_service_key"), (unknown, "bad_service_key"),
                      ("csk_short", "bad_service_key")):
        refused = api.http.get(url, headers=bearer(raw))
        assert refused.status_code == 401, raw
        assert refused.json()["error"] == code
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    missing = api.http.get(url)
    assert (missing.status_code, missing.json()["error"]) == (401, "missing_credentials")
    revoked = api.http.post(f"/api/admin/keys/{created['id']}/revoke", headers=api.admin)
    assert revoked.status_code == 200
    assert revoked.json()["revokedAt"] is not None
    refused = api.http.get(url, headers=bearer(key))
    assert refused.status_code == 401
    assert "was revoked" in refused.json()["message"]
    assert consume(api, inst, bearer(key), 1, "after-revoke").status_code == 401
    missing_key = api.http.post("/api/admin/keys/0123456789abcdef/revoke", headers=api.admin)
    assert missing_key.status_code == 404


def test_a_keys_last_use_is_recorded(api: Api) -> None:
    inst = api.instance()
    provision(api, inst)
    created = create_key(api, READ)
    api.http.get(f"/api/instances/{inst}/credits", headers=bearer(created["key"]))
    listed = api.http.get("/api/admin/keys", headers=api.admin).json()["items"]
    assert next(k for k in listed if k["id"] == created["id"])["lastUsedAt"] is not None


def test_instance_tokens_act_on_their_own_instance_only(api: Api) -> None:
    mine, other = api.instance("mine"), api.instance("other")
    provision(api, mine)
    provision(api, other)
    assert api.http.get(f"/api/instances/{mine}/credits",
                        headers=api.auth(mine)).status_code == 200
    assert consume(api, mine, api.auth(mine), 5, "k").status_code == 200
    for response in (api.http.get(f"/api/instances/{other}/credits", headers=api.auth(mine)),
                     consume(api, other, api.auth(mine), 5, "k"),
                     reserve(api, other, api.auth(mine), 5, "k")):
        assert response.status_code == 403
        assert response.json()["error"] == "wrong_instance"
    held = reserve(api, other, api.auth(other), 5, "job").json()["reservationId"]
    stolen = api.http.post(f"/api/reservations/{held}/commit", headers=api.auth(mine))
    assert (stolen.status_code, stolen.json()["error"]) == (403, "wrong_instance")
    assert api.credits(other)["creditsHeld"] == 5
    assert api.credits(other)["creditsUsed"] == 0


def test_one_instances_routes_never_touch_another(api: Api) -> None:
    a, b = api.instance("a"), api.instance("b")
    provision(api, a)
    provision(api, b)
    key = bearer(create_key(api, SPEND)["key"])
    assert consume(api, a, key, 30, "same-key").status_code == 200
    assert reserve(api, a, key, 20, "same-key").status_code == 200
    assert consume(api, b, key, 7, "same-key").json()["replayed"] is False
    credits_a = api.http.get(f"/api/instances/{a}/credits", headers=key).json()
    credits_b = api.http.get(f"/api/instances/{b}/credits", headers=key).json()
    assert (credits_a["creditsUsed"], credits_a["creditsHeld"]) == (30, 20)
    assert (credits_b["creditsUsed"], credits_b["creditsHeld"]) == (7, 0)
    history_b = api.http.get(f"/api/instances/{b}/history", headers=key).json()["entries"]
    assert [e["kind"] for e in history_b] == ["usage", "provision"]


def test_unknown_instances_are_404_saying_to_provision(api: Api) -> None:
    key = bearer(create_key(api, SPEND)["key"])
    nobody = api.instance("nobody")
    for response in (api.http.get(f"/api/instances/{nobody}/credits", headers=key),
                     api.http.get(f"/api/instances/{nobody}/history", headers=key),
                     consume(api, nobody, key, 1, "k"), reserve(api, nobody, key, 1, "k")):
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "instance_not_found"
        assert "call POST /api/provision first" in response.json()["message"]


def test_consume_by_instance_id_is_idempotent_and_refuses_when_short(api: Api) -> None:
    inst = api.instance()
    provision(api, inst)
    key = bearer(create_key(api, SPEND)["key"])
    first = consume(api, inst, key, 60, "job-1")
    assert first.json() == {"instanceId": inst, "amount": 60, "fromPlan": 60, "fromBonus": 0,
                            "creditsRemaining": 40, "replayed": False}
    assert consume(api, inst, key, 60, "job-1").json()["replayed"] is True
    conflict = consume(api, inst, key, 61, "job-1")
    assert (conflict.status_code, conflict.json()["firstAmount"]) == (409, 60)
    short = consume(api, inst, key, 41, "job-2")
    assert short.status_code == 402
    assert (short.json()["creditsRemaining"], short.json()["requested"]) == (40, 41)


def test_reserve_commit_release_over_http(api: Api) -> None:
    inst = api.instance()
    provision(api, inst)
    key = bearer(create_key(api, SPEND)["key"])
    held = reserve(api, inst, key, 70, "render-1", ttl=600)
    assert held.status_code == 200, held.text
    body = held.json()
    assert body["reservationId"].startswith("rsv_")
    assert (body["instanceId"], body["amount"], body["status"]) == (inst, 70, "held")
    assert api.credits(inst)["creditsRemaining"] == 30
    assert api.credits(inst)["creditsHeld"] == 70
    short = consume(api, inst, key, 31, "other")
    assert (short.status_code, short.json()["creditsRemaining"]) == (402, 30)
    rid = body["reservationId"]
    too_much = api.http.post(f"/api/reservations/{rid}/commit", headers=key,
                             json={"amount": 71})
    assert (too_much.status_code, too_much.json()["error"]) == (400, "commit_exceeds_hold")
    done = api.http.post(f"/api/reservations/{rid}/commit", headers=key, json={"amount": 50})
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["committedAmount"]) == ("committed", 50)
    again = api.http.post(f"/api/reservations/{rid}/commit", headers=key)
    assert again.json() == {**done.json(), "replayed": True}
    assert (api.credits(inst)["creditsUsed"], api.credits(inst)["creditsHeld"]) == (50, 0)
    usage = [e for e in api.ledger(inst) if e.kind == "usage"]
    assert [(e.correlation_id, e.credits_used_after) for e in usage] == [(rid, 50)]
    assert api.http.post(f"/api/reservations/{rid}/release",
                         headers=key).status_code == 409

    second = reserve(api, inst, key, 10, "render-2").json()["reservationId"]
    freed = api.http.post(f"/api/reservations/{second}/release", headers=key)
    assert (freed.status_code, freed.json()["status"]) == (200, "released")
    assert api.credits(inst)["creditsRemaining"] == 50
    gone = api.http.post("/api/reservations/rsv_doesnotexist/commit", headers=key)
    assert (gone.status_code, gone.json()["error"]) == (404, "reservation_not_found")
    reader = bearer(create_key(api, READ)["key"])
    assert api.http.post(f"/api/reservations/{second}/release",
                         headers=reader).status_code == 403


@pytest.mark.parametrize("ttl", [0, 86_401, "60"])
def test_a_bad_ttl_is_422(api: Api, ttl: Any) -> None:
    inst = api.instance()
    provision(api, inst)
    key = bearer(create_key(api, SPEND)["key"])
    assert reserve(api, inst, key, 1, "k", ttl=ttl).status_code == 422


def test_an_expired_hold_frees_its_credits(api: Api) -> None:
    inst = api.instance()
    provision(api, inst)
    key = bearer(create_key(api, SPEND)["key"])
    rid = reserve(api, inst, key, 100, "short", ttl=1).json()["reservationId"]
    assert consume(api, inst, key, 1, "during").status_code == 402
    if api.transport == "testclient":
        api.clock.advance(dt.timedelta(seconds=2))
    else:
        time.sleep(1.2)
    spent = consume(api, inst, key, 100, "after")
    assert spent.status_code == 200, spent.text
    late = api.http.post(f"/api/reservations/{rid}/commit", headers=key)
    assert (late.status_code, late.json()["error"]) == (409, "reservation_expired")
    assert api.credits(inst)["creditsHeld"] == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_holds_and_consumes_over_http_never_overspend(
        servers: dict[str, tuple[Server, str]], backend: str) -> None:
    """Real threads, each with its own connection to a real server, race for 100 credits."""
    server, url = servers[backend]
    engine = database.create(url)
    try:
        inst = f"race-{uuid.uuid4().hex[:10]}"
        instances.provision(engine, inst, now=clock.utcnow())
        key = bearer(creditsync_keys.create(engine, "race", SPEND, now=clock.utcnow()).key)
        outcomes: list[tuple[str, int]] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30, headers=key) as http:
                for step in range(6):
                    tag = f"w{n}-{step}"
                    if (n + step) % 2:
                        answer = http.post(f"/api/instances/{inst}/consume",
                                           json={"amount": 9, "idempotencyKey": tag})
                        outcome = ("consumed", 9) if answer.status_code == 200 else ("", 0)
                    else:
                        answer = http.post(f"/api/instances/{inst}/reservations",
                                           json={"amount": 8, "idempotencyKey": tag})
                        outcome = ("", 0)
                        if answer.status_code == 200:
                            rid = answer.json()["reservationId"]
                            done = http.post(f"/api/reservations/{rid}/commit",
                                             json={"amount": 6})
                            assert done.status_code == 200, done.text
                            outcome = ("committed", 6)
                    assert answer.status_code in (200, 402), answer.text
                    with lock:
                        outcomes.append(outcome)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        spent = sum(amount for _, amount in outcomes)
        found = instances.credits(engine, inst, now=clock.utcnow())
        assert (found.credits_used, found.credits_held) == (spent, 0)
        assert spent <= 100
        assert len(outcomes) == 36
        assert ("", 0) in outcomes  # some were refused: the balance was contended
        assert_holds_match(engine)
        assert_ledger_replays(engine, instance_id=inst)  # the server's database is shared
    finally:
        engine.dispose()


def test_a_grant_key_grants_lists_and_voids_and_consumes_draw_from_grants(api: Api) -> None:
    inst = api.instance()
    provision(api, inst)
    spender = bearer(create_key(api, SPEND)["key"])
    granter = bearer(create_key(api, ["credits:read", "credits:grant"])["key"])
    body = {"amount": 40, "reason": "referral bonus", "priority": 10,
            "idempotencyKey": "referral-1"}
    for refused in (api.http.post(f"/api/instances/{inst}/grants", headers=spender, json=body),
                    api.http.post(f"/api/instances/{inst}/grants", headers=api.auth(inst),
                                  json=body)):
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "missing_scope"
    made = api.http.post(f"/api/instances/{inst}/grants", headers=granter, json=body)
    assert made.status_code == 200, made.text
    grant = made.json()
    assert (grant["amount"], grant["remaining"], grant["priority"], grant["status"],
            grant["replayed"]) == (40, 40, 10, "live", False)
    again = api.http.post(f"/api/instances/{inst}/grants", headers=granter, json=body).json()
    assert (again["grantId"], again["replayed"]) == (grant["grantId"], True)
    other = api.http.post(f"/api/instances/{inst}/grants", headers=granter,
                          json={**body, "amount": 41})
    assert other.status_code == 409, other.text
    credits = api.http.get(f"/api/instances/{inst}/credits", headers=spender).json()
    assert (credits["bonusCredits"], credits["creditsRemaining"]) == (40, 140)
    assert consume(api, inst, spender, 110, "big").status_code == 200  # 100 plan + 10 grant
    listed = api.http.get(f"/api/instances/{inst}/grants", headers=spender).json()["grants"]
    assert [(g["grantId"], g["remaining"]) for g in listed] == [(grant["grantId"], 30)]
    voided = api.http.post(f"/api/instances/{inst}/grants/{grant['grantId']}/void",
                           headers=granter, json={"reason": "referral fraud"})
    assert voided.status_code == 200, voided.text
    assert (voided.json()["status"], voided.json()["remaining"]) == ("voided", 0)
    credits = api.http.get(f"/api/instances/{inst}/credits", headers=spender).json()
    assert (credits["bonusCredits"], credits["creditsRemaining"]) == (0, 0)
    kinds = [e["kind"] for e in api.http.get(f"/api/instances/{inst}/history",
                                              headers=spender).json()["entries"]]
    assert kinds[:3] == ["grant_voided", "usage", "grant"]
    assert_ledger_replays(api.engine, instance_id=inst)


def test_the_vocabulary_names_holds_grants_and_scopes(api: Api) -> None:
    words = api.http.get("/api/vocabulary").json()
    assert words["reservationStatuses"] == ["held", "committed", "released", "expired"]
    assert words["grantStatuses"] == ["live", "spent", "expired", "voided"]
    assert set(words["grantSources"]) == {"admin", "app", "rollover", "migration"}
    assert words["scopes"] == ["credits:read", "credits:consume", "credits:grant"]
