"""The marketplace source through the API: provisioning, Sync Credits and the admin audit.

The marketplace is the stand-in (`tests/support/marketplace.py`, not Wix); the apps are
TestClients on SQLite and PostgreSQL with `CREDITSYNC_WIX_APP_ID` and `…_WIX_API_URL`
pointing at it, so the app secret is the stand-in's client secret.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from creditsync import marketplace_standin
from creditsync_api import devkeys
from tests.api.conftest import Api, local_app
from tests.support import marketplace as stand
from tests.support.database import fresh_database


@contextlib.contextmanager
def with_marketplace(
    request: pytest.FixtureRequest, keys: devkeys.DevKeys, tmp_path: Path, backend: str,
) -> Iterator[tuple[Api, marketplace_standin.Running]]:
    with stand.serving(app_secret=keys.app_secret) as running, \
            fresh_database(request, backend, tmp_path) as url, \
            local_app(url, keys, backend, wix_app_id=stand.APP_ID,
                      wix_api_url=running.url) as api:
        yield api, running


@pytest.fixture(params=["sqlite", "postgres"])
def market(request: pytest.FixtureRequest, keys: devkeys.DevKeys,
           tmp_path: Path) -> Iterator[tuple[Api, marketplace_standin.Running]]:
    with with_marketplace(request, keys, tmp_path, request.param) as found:
        yield found


def provision(api: Api, instance_id: str) -> dict[str, Any]:
    response = api.http.post("/api/provision", headers=api.auth(instance_id))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_a_purchase_before_the_install_has_its_credits_at_provisioning(
    market: tuple[Api, marketplace_standin.Running],
) -> None:
    """No webhook at all: the marketplace says Pro, provisioning puts it in place."""
    api, running = market
    inst = api.instance()
    running.standin.set_paid(inst, "pro")
    credits = provision(api, inst)
    assert (credits["plan"], credits["creditsTotal"], credits["inSync"]) == ("pro", 5000, True)
    assert [e.event_type for e in api.inbox(inst)] == ["MarketplaceSnapshot"]


def test_provisioning_goes_on_when_the_marketplace_does_not_answer(
    market: tuple[Api, marketplace_standin.Running],
) -> None:
    api, running = market
    inst = api.instance()
    running.standin.set_paid(inst, "pro")
    running.standin.fail_with(503)
    credits = provision(api, inst)
    assert (credits["plan"], credits["creditsTotal"]) == ("free", 100)
    stats = api.http.get("/api/admin/stats", headers=api.admin).json()["audit"]
    assert stats["neverChecked"] == 1  # first in line for the next audit
    running.standin.heal()
    healed = api.http.post("/api/admin/audit", headers=api.admin, json={"all": True})
    assert healed.json()["healed"] == 1
    assert api.credits(inst)["creditsTotal"] == 5000


def test_sync_credits_asks_the_marketplace_first_and_says_so(
    market: tuple[Api, marketplace_standin.Running],
) -> None:
    api, running = market
    inst = api.instance()
    provision(api, inst)
    running.standin.set_paid(inst, "starter")
    answer = api.http.post("/api/billing/sync-credits", headers=api.auth(inst)).json()
    assert answer["marketplace"] == {"instanceId": inst, "ourPlan": "free",
                                     "marketplacePlan": "starter", "action": "healed"}
    assert answer["marketplaceError"] is None
    assert (answer["before"]["creditsTotal"], answer["after"]["creditsTotal"]) == (100, 1000)


def test_sync_credits_says_when_the_marketplace_could_not_be_asked(
    market: tuple[Api, marketplace_standin.Running],
) -> None:
    api, running = market
    inst = api.instance()
    provision(api, inst)
    running.standin.fail_with(500)
    answer = api.http.post("/api/billing/sync-credits", headers=api.auth(inst))
    assert answer.status_code == 200
    body = answer.json()
    assert body["marketplace"] is None
    assert "500" in body["marketplaceError"]
    assert body["after"]["plan"] == "free"


def test_the_admin_audit_answers_like_the_cli(
    market: tuple[Api, marketplace_standin.Running],
) -> None:
    api, running = market
    paid, free = api.instance("paid"), api.instance("free")
    running.standin.fail_with(503)
    provision(api, paid)
    provision(api, free)
    running.standin.heal()
    running.standin.set_paid(paid, "scale")
    dry = api.http.post("/api/admin/audit", headers=api.admin,
                        json={"instanceIds": [paid, free], "dryRun": True})
    assert dry.status_code == 200
    assert dry.json() == {"checked": 2, "disagreed": 1, "healed": 0, "errors": 0,
                          "disagreements": [{"instanceId": paid, "ourPlan": "free",
                                             "marketplacePlan": "scale",
                                             "action": "would_heal"}]}
    done = api.http.post("/api/admin/audit", headers=api.admin,
                         json={"instanceIds": [paid, free]}).json()
    assert (done["healed"], api.credits(paid)["creditsTotal"]) == (1, 25000)
    stats = api.http.get("/api/admin/stats", headers=api.admin).json()["audit"]
    assert stats["last"]["checked"] == 2
    assert stats["last"]["healed"] == 1
    metrics = api.http.get("/metrics").text
    assert 'creditsync_marketplace_disagreements_total{action="healed"} 1.0' in metrics
    assert 'creditsync_marketplace_requests_total{endpoint="instance",outcome="ok"}' in metrics
    assert "creditsync_marketplace_token_cache_hits_total" in metrics


def test_the_admin_audit_lists_who_the_marketplace_could_not_answer_for(
    market: tuple[Api, marketplace_standin.Running],
) -> None:
    api, running = market
    inst = api.instance()
    provision(api, inst)
    running.standin.fail_with(502)
    report = api.http.post("/api/admin/audit", headers=api.admin, json={"all": True}).json()
    assert (report["checked"], report["errors"]) == (0, 1)
    unanswered = api.http.get("/api/admin/stats", headers=api.admin).json()["audit"]
    assert unanswered["unansweredCount"] == 1
    assert unanswered["unanswered"][0]["instanceId"] == inst
    assert "502" in unanswered["unanswered"][0]["error"]


def test_with_the_source_off_nothing_asks_the_marketplace(local_api: Api) -> None:
    api = local_api
    inst = api.instance()
    assert provision(api, inst)["plan"] == "free"
    answer = api.http.post("/api/billing/sync-credits", headers=api.auth(inst)).json()
    assert (answer["marketplace"], answer["marketplaceError"]) == (None, None)
    off = api.http.post("/api/admin/audit", headers=api.admin, json={"all": True})
    assert off.status_code == 409
    assert off.json()["error"] == "marketplace_off"
    assert "CREDITSYNC_WIX_APP_ID" in off.json()["message"]
