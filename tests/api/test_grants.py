"""The admin grant routes: list, grant (idempotent), void; clear 4xx for bad input."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.api.conftest import Api, iso


def _grants(api: Api, inst: str) -> list[dict[str, Any]]:
    response = api.http.get(f"/api/admin/instances/{inst}/grants", headers=api.admin)
    assert response.status_code == 200, response.text
    return list(response.json()["grants"])


def test_grant_list_and_void_over_http(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    expires = api.now() + dt.timedelta(days=30)
    body = {"amount": 500, "reason": "spring promotion", "expiresAt": iso(expires),
            "priority": 40, "idempotencyKey": "promo-1"}
    path = f"/api/admin/instances/{inst}/grants"
    first = api.http.post(path, headers=api.admin, json=body)
    assert first.status_code == 200, first.text
    made = first.json()
    assert made == {"grantId": made["grantId"], "amount": 500, "remaining": 500,
                    "priority": 40, "expiresAt": made["expiresAt"], "status": "live",
                    "reason": "spring promotion", "source": "admin",
                    "createdAt": made["createdAt"], "endedAt": None, "replayed": False}
    assert dt.datetime.fromisoformat(made["expiresAt"]) == expires
    again = api.http.post(path, headers=api.admin, json=body).json()
    assert (again["grantId"], again["replayed"]) == (made["grantId"], True)
    clash = api.http.post(path, headers=api.admin, json={**body, "amount": 501})
    assert clash.status_code == 409
    assert clash.json()["error"] == "idempotency_key_reused"
    credits = api.http.get("/api/billing/credits", headers=api.auth(inst)).json()
    assert credits["bonusCredits"] == 500
    assert [g["grantId"] for g in _grants(api, inst)] == [made["grantId"]]

    voided = api.http.post(f"{path}/{made['grantId']}/void", headers=api.admin,
                           json={"reason": "by mistake"})
    assert voided.status_code == 200, voided.text
    assert (voided.json()["status"], voided.json()["remaining"]) == ("voided", 0)
    twice = api.http.post(f"{path}/{made['grantId']}/void", headers=api.admin)
    assert (twice.status_code, twice.json()["error"]) == (409, "grant_not_live")
    history = api.http.get(f"/api/admin/instances/{inst}/history", headers=api.admin).json()
    assert [(e["kind"], e["grantId"]) for e in history["entries"][:2]] == [
        ("grant_voided", made["grantId"]), ("grant", made["grantId"])]


def test_bad_grants_are_clear_4xx(api: Api) -> None:
    inst = api.instance()
    api.install(inst)
    path = f"/api/admin/instances/{inst}/grants"
    past = iso(api.now() - dt.timedelta(days=1))
    for body, status in [
        ({"amount": 0, "reason": "x"}, 422), ({"amount": "5", "reason": "x"}, 422),
        ({"amount": 5, "reason": " "}, 422), ({"amount": 5, "reason": "x", "priority": 101}, 422),
        ({"amount": 5, "reason": "x", "expiresAt": past}, 400),
        ({"amount": 5, "reason": "x", "extra": 1}, 422),
    ]:
        response = api.http.post(path, headers=api.admin, json=body)
        assert response.status_code == status, (body, response.text)
        assert set(response.json()) >= {"error", "message"}
    missing = api.http.post("/api/admin/instances/nobody/grants", headers=api.admin,
                            json={"amount": 5, "reason": "x"})
    assert (missing.status_code, missing.json()["error"]) == (404, "instance_not_found")
    unknown = api.http.post(f"{path}/grt_nope/void", headers=api.admin)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "grant_not_found")
    assert api.http.get(path).status_code == 401


def test_the_instance_sees_its_own_grants(api: Api) -> None:
    inst, other = api.instance("mine"), api.instance("theirs")
    for name in (inst, other):
        api.install(name)
    admin_path = f"/api/admin/instances/{inst}/grants"
    made = api.http.post(admin_path, headers=api.admin,
                         json={"amount": 30, "reason": "welcome"}).json()
    mine = api.http.get("/api/billing/grants", headers=api.auth(inst))
    assert mine.status_code == 200, mine.text
    assert [(g["grantId"], g["remaining"], g["expiresAt"]) for g in mine.json()["grants"]] == [
        (made["grantId"], 30, None)]
    theirs = api.http.get("/api/billing/grants", headers=api.auth(other)).json()
    assert theirs == {"grants": []}
    assert api.http.get("/api/billing/grants").status_code == 401
