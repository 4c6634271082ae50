"""Hostile input at the doors: every one is a 4xx in the error shape, nothing stored, nothing
logged as an unhandled error (issue 9, point 6; `amount` from point 7)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creditsync.storage import database
from creditsync_api import devkeys
from tests.api.conftest import HOOK, Api, Server
from tests.api.test_instance_endpoints import provision

DEEP = 5_000


@pytest.fixture(autouse=True)
def no_unhandled_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING)
    yield
    unhandled = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert unhandled == []


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _signed(api: Api, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, api.keys.private_key, algorithm="RS256")


def _event(api: Api, instance_id: str, fields: Any, *, event_type: str = "PaidPlanPurchased",
           envelope_extra: dict[str, Any] | None = None, **claims: Any) -> str:
    envelope = {"eventType": event_type, "instanceId": instance_id,
                "data": fields if isinstance(fields, str) else json.dumps(fields),
                **(envelope_extra or {})}
    now = int(api.now().timestamp())
    return _signed(api, {"data": json.dumps(envelope), "iat": now, "exp": now + 300, **claims})


def _stored(api: Api) -> int:
    with database.read(api.engine) as conn:
        found: int = conn.execute(sa.text("SELECT count(*) FROM webhook_events WHERE "
                                          "instance_id LIKE :p"),
                                  {"p": f"{api.prefix}%"}).scalar_one()
    return found


def _refused(response: Any, *statuses: int) -> dict[str, Any]:
    assert response.status_code in statuses, response.text
    answer: dict[str, Any] = response.json()
    assert set(answer) == {"error", "message"}
    return answer


def _pages_list_cleanly(api: Api) -> None:
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = api.http.get("/api/admin/webhooks", headers=api.admin, params=params)
        assert page.status_code == 200, page.text
        cursor = page.json()["nextCursor"]
        if cursor is None:
            return


# -- webhooks -------------------------------------------------------------------------------


def test_a_jwt_header_nested_5000_deep_is_refused(local_api: Api) -> None:
    body = f"{_b64(b'[' * DEEP)}.{_b64(b'{}')}.{_b64(b'sig')}"

    answer = _refused(local_api.post(body), 400, 401)

    assert answer["error"] in {"malformed_webhook", "bad_signature"}


@pytest.mark.parametrize("where", ["data", "data.data"])
def test_deeply_nested_event_data_is_refused(local_api: Api, where: str) -> None:
    inst = local_api.instance()
    nested = "[" * DEEP + "]" * DEEP
    if where == "data":
        now = int(local_api.now().timestamp())
        body = _signed(local_api, {"data": nested, "iat": now})
    else:
        body = _event(local_api, inst, '{"vendorProductId": "pro", "x": ' + nested + "}")

    answer = _refused(local_api.post(body), 400)

    assert answer["error"] == "malformed_webhook"
    assert _stored(local_api) == 0


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
@pytest.mark.parametrize("field", ["operationTimeStamp", "expiresOn"])
def test_times_outside_the_calendar_are_refused(local_api: Api, stamp: str, field: str) -> None:
    at = "2026-01-01T00:00:00Z"
    fields = {"vendorProductId": "pro", "operationTimeStamp": at, field: stamp}

    answer = _refused(local_api.post(_event(local_api, local_api.instance(), fields)), 400)

    assert answer["error"] == "malformed_webhook"
    assert _stored(local_api) == 0


@pytest.mark.parametrize(("claims", "status"), [
    ({"exp": -1e300}, 401), ({"exp": float("-inf")}, 400), ({"exp": float("nan")}, 400),
    ({"exp": 10**400}, 200), ({"exp": -10**400}, 401), ({"iat": 1e300}, 401),
    ({"iat": float("inf")}, 400), ({"nbf": float("nan")}, 400), ({"exp": "soon"}, 400),
])
def test_extreme_signed_claims_are_refused(local_api: Api, claims: dict[str, Any],
                                           status: int) -> None:
    inst = local_api.instance()
    fields = {"vendorProductId": "pro", "operationTimeStamp": "2026-01-01T00:00:00Z"}

    response = local_api.post(_event(local_api, inst, fields, **claims))

    if status == 200:  # a far future expiry is just that
        assert response.status_code == 200, response.text
        return
    _refused(response, status)
    assert _stored(local_api) == 0


@pytest.mark.parametrize("iat", [-1e12, -10**400, 1e12 * 1000])
def test_an_install_signed_outside_the_calendar_is_refused(local_api: Api, iat: float) -> None:
    envelope = {"eventType": "AppInstalled", "instanceId": local_api.instance(), "data": "{}"}
    body = _signed(local_api, {"data": json.dumps(envelope), "iat": iat})

    _refused(local_api.post(body), 400, 401)
    assert _stored(local_api) == 0


SURROGATE = "\ud800"


@pytest.mark.parametrize("where", ["instanceId", "eventType", "vendorProductId", "invoiceId",
                                   "a key", "nested", "envelope", "claim"])
def test_text_that_is_not_unicode_is_refused_at_the_door(local_api: Api, where: str) -> None:
    inst = local_api.instance()
    fields: dict[str, Any] = {"vendorProductId": "pro",
                              "operationTimeStamp": "2026-01-01T00:00:00Z"}
    envelope_extra: dict[str, Any] = {}
    claims: dict[str, Any] = {}
    if where == "instanceId":
        inst = inst + SURROGATE
    elif where in ("vendorProductId", "invoiceId"):
        fields[where] = f"x{SURROGATE}"
    elif where == "a key":
        fields[SURROGATE] = 1
    elif where == "nested":
        fields["extra"] = [{"deep": [SURROGATE]}]
    elif where == "envelope":
        envelope_extra["note"] = SURROGATE
    elif where == "claim":
        claims["note"] = SURROGATE
    event_type = f"PaidPlanPurchased{SURROGATE}" if where == "eventType" else "PaidPlanPurchased"
    body = _event(local_api, inst, fields, event_type=event_type,
                  envelope_extra=envelope_extra, **claims)

    answer = _refused(local_api.post(body), 400)

    assert answer["error"] == "malformed_webhook"
    assert _stored(local_api) == 0
    _pages_list_cleanly(local_api)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e400", '"a\\u0000b"'])
def test_values_a_database_cannot_hold_are_refused(local_api: Api, value: str) -> None:
    fields = ('{"vendorProductId": "pro", "operationTimeStamp": "2026-01-01T00:00:00Z", '
              f'"x": {value}}}')

    _refused(local_api.post(_event(local_api, local_api.instance(), fields)), 400)
    assert _stored(local_api) == 0


# -- instance tokens ------------------------------------------------------------------------


def _token(api: Api, payload: str) -> dict[str, str]:
    part = _b64(payload.encode())
    signature = _b64(hmac.new(api.keys.app_secret.encode(), part.encode(),
                              hashlib.sha256).digest())
    return {"Authorization": f"Bearer {signature}.{part}"}


def _claims(api: Api, **fields: Any) -> str:
    return json.dumps({"instanceId": api.instance(), "uid": "owner",
                       "signDate": api.now().isoformat(), **fields})


@pytest.mark.parametrize("what", ["nested", "nested inside", "year 1", "year 9999",
                                  "surrogate id", "surrogate product", "surrogate uid"])
def test_hostile_instance_tokens_are_refused(local_api: Api, what: str) -> None:
    api = local_api
    payload = {
        "nested": "[" * DEEP + "]" * DEEP,
        "nested inside": _claims(api)[:-1] + ', "x": ' + "[" * DEEP + "]" * DEEP + "}",
        "year 1": _claims(api, signDate="0001-01-01T00:00:00+14:00"),
        "year 9999": _claims(api, signDate="9999-12-31T23:59:59-14:00"),
        "surrogate id": _claims(api, instanceId=api.instance() + SURROGATE),
        "surrogate product": _claims(api, vendorProductId=SURROGATE),
        "surrogate uid": _claims(api, uid=SURROGATE),
    }[what]

    for method, path in (("GET", "/api/billing/credits"), ("POST", "/api/provision")):
        answer = _refused(api.http.request(method, path, headers=_token(api, payload)), 401)
        assert answer["error"] == "malformed_token"
    assert api.http.get("/api/admin/instances", headers=api.admin).json()["items"] == []


# -- admin ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["0001-01-01T00:00:00+14:00|x", "9999-12-31T23:59:59-14:00|x",
                                 "not a time|x", "2026-01-01T00:00:00|x"])
def test_a_forged_webhook_cursor_is_a_bad_cursor(local_api: Api, key: str) -> None:
    response = local_api.http.get("/api/admin/webhooks", headers=local_api.admin,
                                  params={"cursor": _b64(key.encode())})

    assert _refused(response, 400)["error"] == "bad_cursor"


@pytest.mark.parametrize(("header", "code"), [(None, "missing_admin_token"),
                                              ("Bearer wrong", "bad_admin_token")])
@pytest.mark.parametrize("body", ["{not json", '{"all": "yes please"}', "[" * DEEP])
def test_admin_bodies_are_not_read_before_the_token_is_checked(
    local_api: Api, header: str | None, code: str, body: str,
) -> None:
    headers = {"Content-Type": "application/json", **({"Authorization": header} if header else {})}

    for path in ("/api/admin/sync", "/api/admin/instances/x/adjust", "/api/admin/nowhere"):
        response = local_api.http.post(path, content=body, headers=headers)
        assert _refused(response, 401)["error"] == code


# -- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "size", "chunked"), [
    (HOOK, 64 * 1024 + 1, False), (HOOK, 64 * 1024 + 1, True),
    ("/api/admin/sync", 1024 * 1024 + 1, False), ("/api/admin/sync", 1024 * 1024 + 1, True),
    # a route that reads no body refuses a declared one; a streamed one is never read
    ("/api/provision", 1024 * 1024 + 1, False)])
def test_bodies_over_the_limit_are_413(local_api: Api, path: str, size: int,
                                       chunked: bool) -> None:
    body = b"x" * size
    content: Any = iter([body[:1000], body[1000:]]) if chunked else body

    response = local_api.http.post(path, content=content,
                                   headers={**local_api.admin, "Content-Type": "text/plain"})

    answer = _refused(response, 413)
    assert answer == {"error": "payload_too_large",
                      "message": f"the body has more than {size - 1} bytes, the most this "
                                 "route accepts"}
    if path == HOOK:
        metrics = local_api.http.get("/metrics").text
        assert 'creditsync_webhooks_total{event_type="other",outcome="malformed"} 1.0' in metrics


def test_a_body_just_within_the_webhook_limit_is_read(local_api: Api) -> None:
    answer = _refused(local_api.post("x" * 64 * 1024), 400)

    assert answer["error"] == "malformed_webhook"


def _raw_request(server: Server, head: str) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1"))
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


@pytest.mark.parametrize("path", [HOOK, "/api/admin/sync"])
def test_a_large_content_length_is_refused_before_the_body_is_sent(
    servers: dict[str, tuple[Server, str]], keys: devkeys.DevKeys, path: str,
) -> None:
    """The server answers on the headers alone: it never waits for (or buffers) 50 MiB."""
    server, _url = servers["sqlite"]

    answer = _raw_request(server, f"POST {path} HTTP/1.1\r\nHost: x\r\n"
                                  f"Authorization: Bearer {keys.admin_token}\r\n"
                                  f"Content-Length: {50 * 1024 * 1024}\r\n\r\n")

    assert answer.startswith(b"HTTP/1.1 413 "), answer


# -- consume --------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", ["3", True, 2.0, 3.5, None, [3]])
def test_consume_amount_is_a_json_integer(local_api: Api, amount: Any) -> None:
    inst = local_api.instance()
    provision(local_api, inst)

    response = local_api.http.post("/api/credits/consume", headers=local_api.auth(inst),
                                   json={"amount": amount, "idempotencyKey": "k"})

    assert _refused(response, 422)["error"] == "invalid_request"
    assert local_api.credits(inst)["creditsUsed"] == 0


# -- random signed events -------------------------------------------------------------------

_odd = st.sampled_from(["\ud800", "\udfff", "\x00", "\ufffe", "\U0001f600", "\u202e", "'\"\\"])
_texts = st.one_of(st.text(max_size=12),
                   st.builds(lambda a, b, c: a + b + c, st.text(max_size=4), _odd,
                             st.text(max_size=4)))
_numbers = st.one_of(st.integers(), st.floats(), st.sampled_from(
    [10**400, -10**400, 2**63, -2**63 - 1, 1e308, float("nan"), float("inf")]))
_json = st.recursive(st.one_of(st.none(), st.booleans(), _numbers, _texts),
                     lambda inner: st.one_of(st.lists(inner, max_size=3),
                                             st.dictionaries(_texts, inner, max_size=3)),
                     max_leaves=12)
_times = st.one_of(
    st.none(), _texts, st.integers(),
    st.datetimes(timezones=st.timezones()).map(lambda moment: moment.isoformat()),
    st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
                     "2026-01-10T12:00:00.000Z", "1969-12-31T23:59:59Z", "2026-02-30T00:00Z"]))


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"d": value}
    return value


@st.composite
def _events(draw: st.DrawFn) -> tuple[str, str, Any, dict[str, Any]]:
    event_type = draw(st.one_of(st.sampled_from(
        ["PaidPlanPurchased", "PaidPlanChanged", "PaidPlanAutoRenewalCancelled",
         "PlanConvertedToPaid", "PlanReactivated", "PlanTransferred", "AppInstalled",
         "AppRemoved"]), _texts))
    fields: dict[str, Any] = draw(st.dictionaries(_texts, _json, max_size=4))
    for name, values in (("vendorProductId", st.one_of(st.sampled_from(
            ["free", "starter", "pro", "scale", "unknown"]), _json)),
                         ("operationTimeStamp", _times), ("expiresOn", _times),
                         ("previousVendorProductId", _json), ("deep", st.integers(0, 1200)
                                                             .map(_deep))):
        if draw(st.booleans()):
            fields[name] = draw(values)
    claims: dict[str, Any] = {}
    if draw(st.booleans()):
        claims["iat"] = draw(st.one_of(_numbers, _texts))
    return event_type, draw(_texts), fields, claims


@pytest.mark.parametrize("local_api", ["sqlite", "postgres"], indirect=True)
def test_random_signed_events_never_answer_5xx(local_api: Api) -> None:
    api = local_api
    answered: dict[int, int] = {}

    @settings(max_examples=75, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(_events())
    def post(event: tuple[str, str, Any, dict[str, Any]]) -> None:
        event_type, name, fields, claims = event
        envelope = {"eventType": event_type, "instanceId": api.instance(name),
                    "data": json.dumps(fields)}
        now = int(api.now().timestamp())
        body = _signed(api, {"data": json.dumps(envelope), "iat": now, "exp": now + 300,
                             **claims})
        response = api.post(body)
        answered[response.status_code] = answered.get(response.status_code, 0) + 1
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert set(response.json()) == {"error", "message"}

    post()

    assert set(answered) <= {200, 400, 401}
    _pages_list_cleanly(api)
    cursor = None
    while True:
        page = api.http.get("/api/admin/instances", headers=api.admin,
                            params={"limit": 7, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        if (cursor := page.json()["nextCursor"]) is None:
            break
