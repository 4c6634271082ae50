"""Events to the app: written in the change's transaction, delivered signed, in order per
instance, retried with the same webhook-id, dead-lettered, replayed; on SQLite and
PostgreSQL, to a real HTTP receiver that verifies every signature with `standardwebhooks`."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from creditsync import (
    config,
    convergence,
    delivery,
    enums,
    errors,
    grants,
    inbox,
    instances,
    outbox,
    reservations,
    usage,
)
from creditsync.storage import database, models
from tests.core.helpers import HOUR, RESET, hand_edit
from tests.support.receiver import AppReceiver, new_secret
from tests.support.times import T0

_o = models.OUTBOX
_ledger = models.LEDGER


@pytest.fixture
def receiver() -> Iterator[AppReceiver]:
    with AppReceiver() as app:
        yield app


@pytest.fixture
def client(receiver: AppReceiver) -> Iterator[delivery.Client]:
    made = delivery.Client(receiver.url, receiver.secret, timeout=2.0)
    try:
        yield made
    finally:
        made.close()


def rows(engine: Engine, instance_id: str | None = None) -> list[sa.Row[Any]]:
    query = sa.select(_o).order_by(_o.c.seq)
    if instance_id is not None:
        query = query.where(_o.c.instance_id == instance_id)
    with database.read(engine) as conn:
        return list(conn.execute(query))


def ledger_id(engine: Engine, instance_id: str, kind: str) -> int:
    with database.read(engine) as conn:
        return int(conn.execute(sa.select(sa.func.max(_ledger.c.id)).where(
            _ledger.c.instance_id == instance_id, _ledger.c.kind == kind)).scalar_one())


def numbers(plan: str, total: int, used: int, bonus: int, start: dt.datetime,
            end: dt.datetime) -> dict[str, Any]:
    return {"plan": plan, "creditsTotal": total, "creditsUsed": used, "bonusCredits": bonus,
            "creditsRemaining": max(total - used, 0) + bonus,
            "periodStart": outbox.timestamp(start), "periodEnd": outbox.timestamp(end)}


END = dt.datetime(2026, 2, 10, 12, 0, tzinfo=dt.UTC)  # a month after T0


def spend_down(engine: Engine, instance_id: str, at: dt.datetime = T0 + HOUR) -> None:
    """100 free credits → 15 (credits.low 20%) → 4 (credits.low 5%) → 0 (credits.depleted)."""
    instances.provision(engine, instance_id, now=T0, pol=RESET)
    for n, amount in enumerate((85, 11, 4)):
        usage.consume(engine, instance_id, amount, f"k{n}", now=at, pol=RESET)


def test_a_spend_writes_its_events_with_the_numbers_and_the_ledger_row(engine: Engine) -> None:
    spend_down(engine, "u")
    found = rows(engine, "u")
    assert [(r.type, r.payload["data"].get("threshold")) for r in found] == [
        ("credits.low", 20), ("credits.low", 5), ("credits.depleted", None)]
    first = found[0]
    assert first.payload == {
        "type": "credits.low", "timestamp": "2026-01-10T13:00:00Z",
        "data": {"instanceId": "u", "ledgerId": first.payload["data"]["ledgerId"],
                 "before": numbers("free", 100, 0, 0, T0, END),
                 "after": numbers("free", 100, 85, 0, T0, END),
                 "threshold": 20, "thresholdCredits": 20}}
    with database.read(engine) as conn:
        entry = conn.execute(sa.select(_ledger).where(
            _ledger.c.id == first.payload["data"]["ledgerId"])).one()
    assert (entry.instance_id, entry.kind, entry.credits_used_after) == ("u", "usage", 85)
    assert found[2].payload["data"]["ledgerId"] == ledger_id(engine, "u", "usage")
    assert {r.status for r in found} == {"pending"}
    assert all(r.id.startswith("msg_") and len(r.id) == 30 for r in found)


def test_every_delivery_is_signed_and_carries_the_stored_payload(
    engine: Engine, receiver: AppReceiver, client: delivery.Client,
) -> None:
    spend_down(engine, "u")
    assert outbox.deliver_due(engine, client, T0 + HOUR) == {
        "delivered": 3, "retry": 0, "dead": 0}
    stored = rows(engine, "u")
    assert [(a.webhook_id, a.payload) for a in receiver.accepted] == [
        (r.id, r.payload) for r in stored]
    assert all(a.verified for a in receiver.attempts)
    headers = receiver.attempts[0].headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == delivery.USER_AGENT
    assert headers["webhook-signature"].startswith("v1,")
    assert {r.status for r in rows(engine)} == {"delivered"}
    assert outbox.deliver_due(engine, client, T0 + 2 * HOUR) == {
        "delivered": 0, "retry": 0, "dead": 0}  # nothing twice
    assert len(receiver.attempts) == 3


def test_a_wrong_secret_is_refused_by_the_app(engine: Engine, receiver: AppReceiver) -> None:
    spend_down(engine, "u")
    wrong = delivery.Client(receiver.url, new_secret())
    try:
        assert outbox.deliver_due(engine, wrong, T0 + HOUR, max_rounds=1) == {
            "delivered": 0, "retry": 1, "dead": 0}
    finally:
        wrong.close()
    assert [a.verified for a in receiver.attempts] == [False]
    assert rows(engine, "u")[0].last_error == "HTTP 401"


def test_a_rolled_back_change_sends_nothing(
    engine: Engine, receiver: AppReceiver, client: delivery.Client,
) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    with pytest.raises(usage.InsufficientCredits):
        usage.consume(engine, "u", 101, "too-much", now=T0, pol=RESET)
    hand_edit(engine, "u", credits_total=40)  # a drift the next convergence repairs ...
    with pytest.raises(RuntimeError, match="the caller failed"):
        repair_then_fail(engine)  # ... in a transaction that rolls back
    assert rows(engine) == []
    assert outbox.deliver_due(engine, client, T0 + HOUR) == {
        "delivered": 0, "retry": 0, "dead": 0}
    assert receiver.attempts == []


def repair_then_fail(engine: Engine) -> None:
    with database.write(engine) as conn:
        convergence.converge_in(conn, ["u"], trigger="manual", actor=enums.Actor.ADMIN,
                                correlation_id="c", now=T0, pol=RESET)
        assert [r.type for r in conn.execute(sa.select(_o.c.type))] == ["credits.repaired"]
        raise RuntimeError("the caller failed")


def test_a_failing_app_gets_every_event_afterwards_in_order_with_the_same_ids(
    engine: Engine, receiver: AppReceiver, client: delivery.Client,
) -> None:
    spend_down(engine, "a")
    spend_down(engine, "b")
    receiver.failing = {"a"}
    now = T0 + HOUR
    for _ in range(4):  # a's oldest event fails and waits; a's later ones wait behind it
        outbox.deliver_due(engine, client, now)
        now += dt.timedelta(minutes=5)
    a_rows, b_rows = rows(engine, "a"), rows(engine, "b")
    assert [r.status for r in b_rows] == ["delivered"] * 3
    assert [(r.status, r.attempts) for r in a_rows] == [
        ("pending", 4), ("pending", 0), ("pending", 0)]
    assert a_rows[0].last_error == "HTTP 503"
    assert a_rows[0].next_attempt_at == now - dt.timedelta(minutes=5) + outbox.backoff(4)
    receiver.failing = set()
    outbox.deliver_due(engine, client, now + HOUR)
    a_ids = [r.id for r in a_rows]
    assert [a.webhook_id for a in receiver.accepted if a.webhook_id in a_ids] == a_ids
    assert [a.webhook_id for a in receiver.attempts if a.status == 503] == [a_ids[0]] * 4
    assert all(a.verified for a in receiver.attempts)
    assert sorted(a.webhook_id for a in receiver.accepted) == sorted(
        r.id for r in rows(engine))  # every event once
    assert {r.status for r in rows(engine)} == {"delivered"}


def test_after_the_last_attempt_an_event_is_dead_and_the_next_goes_then_replay(
    engine: Engine, receiver: AppReceiver, client: delivery.Client,
) -> None:
    spend_down(engine, "a")
    receiver.failing = {"a"}
    now = T0 + HOUR
    for _ in range(outbox.MAX_ATTEMPTS):
        outbox.deliver_due(engine, client, now, max_rounds=1)
        now += dt.timedelta(hours=2)
    head, *rest = rows(engine, "a")
    assert (head.status, head.attempts, head.next_attempt_at) == (
        "dead", outbox.MAX_ATTEMPTS, None)
    assert [r.status for r in rest] == ["pending", "pending"]
    receiver.failing = set()
    assert outbox.deliver_due(engine, client, now) == {"delivered": 2, "retry": 0, "dead": 0}
    replayed = outbox.replay(engine, head.id, now=now)
    assert (replayed.status, replayed.attempts) == ("pending", 0)
    with pytest.raises(errors.Conflict, match="is pending"):
        outbox.replay(engine, head.id, now=now)
    with pytest.raises(errors.NotFound, match="no delivery msg_nope"):
        outbox.replay(engine, "msg_nope", now=now)
    assert outbox.deliver_due(engine, client, now) == {"delivered": 1, "retry": 0, "dead": 0}
    assert receiver.accepted[-1].webhook_id == head.id
    assert outbox.counts(engine) == {"pending": 0, "delivered": 3, "dead": 0}


def test_a_hanging_app_times_out_and_is_retried(engine: Engine, receiver: AppReceiver) -> None:
    spend_down(engine, "u")
    receiver.hang_s = 0.5
    slow = delivery.Client(receiver.url, receiver.secret, timeout=0.2)
    try:
        outbox.deliver_due(engine, slow, T0 + HOUR, max_rounds=1)
    finally:
        slow.close()
    head = rows(engine, "u")[0]
    assert (head.status, head.attempts, head.last_error) == ("pending", 1, "timeout after 0.2s")


def test_two_deliverers_at_once_send_each_event_once(
    engine: Engine, receiver: AppReceiver, client: delivery.Client,
) -> None:
    for n in range(6):
        spend_down(engine, f"i{n}")
    receiver.hang_s = 0.02
    skipped: list[bool] = []

    def deliver() -> None:
        for _ in range(5):
            skipped.append(outbox.deliver_due(engine, client, T0 + HOUR) is None)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    ids = [a.webhook_id for a in receiver.accepted]
    assert sorted(ids) == sorted(r.id for r in rows(engine))
    assert len(ids) == 18
    for n in range(6):
        mine = [r.id for r in rows(engine, f"i{n}")]
        assert [i for i in ids if i in mine] == mine  # in order per instance
    assert any(skipped)  # the lock made one of them skip at least once


def test_convergence_writes_reset_repair_and_plan_change_events(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    usage.consume(engine, "u", 90, "k", now=T0 + HOUR, pol=RESET)
    later = END + HOUR
    convergence.converge(engine, trigger="timer", actor=enums.Actor.TIMER, now=later, pol=RESET)
    hand_edit(engine, "u", credits_total=40)
    convergence.converge(engine, trigger="timer", actor=enums.Actor.TIMER, now=later, pol=RESET)
    incoming = inbox.Incoming(instance_id="u", event_type="PaidPlanPurchased",
                              operation_time=later, product_id="pro", expires_at=None,
                              payload={"vendorProductId": "pro"})
    assert inbox.ingest(engine, incoming, now=later, pol=RESET).status == "applied"
    found = [r for r in rows(engine, "u") if r.type != "credits.low"]
    assert [r.type for r in found] == ["credits.reset", "credits.repaired", "plan.changed"]
    reset, repaired, changed = (r.payload["data"] for r in found)
    assert reset == {"instanceId": "u", "ledgerId": ledger_id(engine, "u", "period_reset"),
                     "kind": "period_reset", "reason": "monthly period ended",
                     "before": numbers("free", 100, 90, 0, T0, END),
                     "after": numbers("free", 100, 0, 0, END, dt.datetime(
                         2026, 3, 10, 12, tzinfo=dt.UTC))}
    assert (repaired["ledgerId"], repaired["before"]["creditsTotal"],
            repaired["after"]["creditsTotal"], repaired["reason"]) == (
        ledger_id(engine, "u", "drift_repair"), 40, 100, "credits_total 40, plan free pays 100")
    assert (changed["ledgerId"], changed["previousPlan"], changed["plan"],
            changed["after"]["creditsTotal"]) == (
        ledger_id(engine, "u", "plan_change"), "free", "pro", 5000)


def test_a_batch_of_resets_writes_one_event_each_with_its_own_ledger_row(
    engine: Engine,
) -> None:
    for n in range(30):
        instances.provision(engine, f"i{n:02}", now=T0, pol=RESET)
    convergence.converge(engine, trigger="timer", actor=enums.Actor.TIMER, now=END + HOUR,
                         pol=RESET, batch_size=7)
    found = rows(engine)
    assert len(found) == 30
    assert {r.type for r in found} == {"credits.reset"}
    for r in found:
        assert r.payload["data"]["ledgerId"] == ledger_id(engine, r.instance_id,
                                                          "period_reset")


def test_a_grant_expiry_writes_its_event_with_its_ledger_row(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    made = grants.create(engine, "u", 25, reason="trial", now=T0, expires_at=T0 + HOUR)
    assert grants.expire_due(engine, T0 + HOUR / 2) == []
    assert [r.type for r in rows(engine, "u")] == []
    (ended,) = grants.expire_due(engine, T0 + HOUR)
    (row,) = rows(engine, "u")
    assert row.type == "grant.expired"
    data = row.payload["data"]
    assert data["ledgerId"] == ended.ledger_id == ledger_id(engine, "u", "grant_expired")
    assert data["grant"] == {"grantId": made.grant.id, "amount": 25, "expired": 25,
                             "priority": 50, "reason": "trial", "source": "admin",
                             "expiresAt": outbox.timestamp(T0 + HOUR)}
    assert (data["before"]["bonusCredits"], data["after"]["bonusCredits"]) == (25, 0)


def test_a_voided_grant_sends_no_expiry(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    made = grants.create(engine, "u", 25, reason="trial", now=T0, expires_at=T0 + HOUR)
    grants.void(engine, "u", made.grant.id, now=T0, reason=None)
    assert grants.expire_due(engine, T0 + HOUR) == []
    assert rows(engine, "u") == []


def test_a_reservations_commit_sends_the_thresholds_it_crosses(engine: Engine) -> None:
    instances.provision(engine, "u", now=T0, pol=RESET)
    hold = reservations.reserve(engine, "u", 90, "job-1", ttl=dt.timedelta(minutes=5),
                                now=T0 + HOUR)
    assert rows(engine, "u") == []  # a hold changes no balance
    reservations.commit(engine, hold.id, 85, now=T0 + HOUR)
    found = rows(engine, "u")
    assert [(r.type, r.payload["data"].get("threshold")) for r in found] == [
        ("credits.low", 20)]
    assert found[0].payload["data"]["ledgerId"] == ledger_id(engine, "u", "usage")


def instances_row(engine: Engine, instance_id: str) -> sa.Row[Any]:
    with database.read(engine) as conn:
        return conn.execute(sa.select(models.INSTANCES).where(
            models.INSTANCES.c.instance_id == instance_id)).one()


def test_the_secret_must_be_whsec_base64_of_24_to_64_bytes() -> None:
    assert len(config.webhook_secret_bytes(new_secret())) == 32
    for bad, says in (("abc", "use whsec_ followed by base64"),
                      ("whsec_!!!!", "use whsec_ followed by base64"),
                      ("whsec_YWJj", "the key is 3 bytes; use 24 to 64")):
        with pytest.raises(config.ConfigError, match=says):
            config.webhook_secret_bytes(bad)
        with pytest.raises(config.ConfigError, match="CREDITSYNC_APP_WEBHOOK_SECRET"):
            config.from_env({"CREDITSYNC_APP_WEBHOOK_SECRET": bad})
    with pytest.raises(config.ConfigError, match="CREDITSYNC_APP_WEBHOOK_URL='ftp://x'"):
        config.from_env({"CREDITSYNC_APP_WEBHOOK_URL": "ftp://x"})
    settings = config.from_env({"CREDITSYNC_APP_WEBHOOK_URL": "http://127.0.0.1:9/x"})
    with pytest.raises(config.ConfigError, match="CREDITSYNC_APP_WEBHOOK_SECRET is not"):
        delivery.from_settings(settings)
    assert delivery.from_settings(config.from_env({})) is None
    servers = config.Settings(wix_public_key="k", app_secret="s", admin_token="a" * 16,
                              app_webhook_url="https://app.example.com/hooks")
    with pytest.raises(config.ConfigError, match="CREDITSYNC_APP_WEBHOOK_URL is set but "
                                                 "CREDITSYNC_APP_WEBHOOK_SECRET is not"):
        servers.require_secrets()
    servers.replace(app_webhook_secret=new_secret()).require_secrets()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.text(), _json_values, max_size=6))
def test_a_body_is_the_compact_json_the_app_verifies(data: dict[str, object]) -> None:
    """The signed bytes are compact JSON, UTF-8 unescaped, in the payload's key order (what
    `json.dumps` writes with those options), and read back to the same payload."""
    event = outbox.payload(outbox.Event("i-é", enums.AppEvent.CREDITS_LOW, data), T0)
    sent = outbox.body(event)
    assert sent == json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    assert json.loads(sent) == event
