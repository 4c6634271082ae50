"""Wix App Market billing webhooks: verify the RS256 JWT, decode it into an inbox event.

The body is a JWT signed with the marketplace's key. Its claim `data` is a JSON string
holding `eventType`, `instanceId` and `data`, itself a JSON string with the event's fields
(`vendorProductId`, `operationTimeStamp`, `expiresOn`, ...). `exp` and `iat` are checked
against the caller's clock, with a little leeway for clock skew.

`RejectedError` (answer 401: nothing is stored) is for tokens that are not the marketplace's:
a bad signature, another algorithm, expired. `MalformedError` (answer 400) is for bodies that
are not a JWT at all, or that are signed but do not hold an event. `sign_event()` makes the
same format for development, tests and benchmarks.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from creditsync import config, inbox
from creditsync_api import untrusted

ALGORITHM = "RS256"
LEEWAY = dt.timedelta(seconds=60)
MAX_ID = 100
MAX_EVENT_TYPE = 64
MAX_PRODUCT = 200


class RejectedError(Exception):
    """Not signed by the marketplace (or no longer valid): 401, nothing stored."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MalformedError(Exception):
    """Not a webhook this endpoint understands: 400."""


def load_public_key(pem: str) -> rsa.RSAPublicKey:
    """The marketplace's RSA public key from PEM; `ConfigError` when it is not one."""
    try:
        key = serialization.load_pem_public_key(pem.strip().encode())
    except ValueError as exc:
        raise config.ConfigError(
            "CREDITSYNC_WIX_PUBLIC_KEY is not a PEM public key (-----BEGIN PUBLIC KEY-----): "
            "paste the key from the app's Wix Dev Center page"
        ) from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise config.ConfigError("CREDITSYNC_WIX_PUBLIC_KEY must be an RSA key (RS256)")
    return key


JWT_SHAPE = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$"
_SHAPE = re.compile(JWT_SHAPE)
_RS256 = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256)


def verify(token: str, key: rsa.RSAPublicKey, now: dt.datetime) -> dict[str, Any]:
    """The verified claims of `token`; raises `RejectedError` or `MalformedError`.

    The segments are checked against the base64url alphabet by one regular expression and
    decoded by the standard library; the signature is checked by PyJWT's RS256 (PyJWT's
    own decoder checks the alphabet a character at a time, a third of this endpoint's CPU).
    What is accepted is exactly what `jwt.decode(token, key, algorithms=["RS256"],
    leeway=LEEWAY)` accepts at `now` (tests/api/test_jwt_equivalence.py proves it); PyJWT
    itself cannot be used, as it takes the wall clock instead of the request's.
    """
    if not _SHAPE.match(token):
        raise MalformedError(
            "the body is not a JWT: the marketplace posts the signed event as the raw body")
    head, body, signature = token.split(".")
    try:
        header = untrusted.loads(_b64decode(head))
        if not isinstance(header, dict):
            raise ValueError("not an object")
        raw_signature = _b64decode(signature)
    except ValueError as exc:  # binascii.Error and JSON errors are ValueErrors
        raise RejectedError("bad_signature",
                            f"the JWT cannot be decoded, so it cannot be verified: {exc}") from exc
    if header.get("alg") != ALGORITHM:
        raise RejectedError("wrong_algorithm",
                            f"the JWT is signed with {header.get('alg')!r}; only {ALGORITHM} "
                            "with the marketplace's key is accepted")
    _check_header(header)
    if not _RS256.verify(f"{head}.{body}".encode("ascii"), key, raw_signature):
        raise RejectedError("bad_signature",
                            "the JWT's signature does not match CREDITSYNC_WIX_PUBLIC_KEY: it "
                            "was forged, altered, or signed for another app")
    # signed by the marketplace from here on: what is wrong inside is malformed, not forged
    try:
        claims = untrusted.loads(_b64decode(body))
    except ValueError as exc:
        raise MalformedError(f"the JWT's payload cannot be read: {exc}") from exc
    if not isinstance(claims, dict):
        raise MalformedError("the JWT's payload is not a JSON object")
    _check_times(claims, now.timestamp(), LEEWAY.total_seconds())
    for name in ("sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise MalformedError(f"the JWT claim {name} must be a string")
    if claims.get("aud"):
        raise RejectedError("wrong_audience",
                            "the JWT names an audience (aud); the marketplace's webhooks do not")
    return claims


def _check_header(header: Mapping[str, Any]) -> None:
    """PyJWT's header rules: `kid` is text; `crit` lists only `b64`, which must not be off."""
    if "kid" in header and not isinstance(header["kid"], str):
        raise RejectedError("bad_header", "the JWT header's kid must be a string")
    if "crit" in header:
        crit = header["crit"]
        if not isinstance(crit, list) or not crit or any(ext != "b64" for ext in crit):
            raise RejectedError("bad_header",
                                f"the JWT header is critical for {crit!r}: unsupported")
    if header.get("b64", True) is False:
        raise RejectedError("bad_header", "the JWT has a detached payload (b64: false)")


def _check_times(claims: Mapping[str, Any], stamp: float, skew: float) -> None:
    """PyJWT's rules: a present iat, nbf or exp is read with `int()`, then compared."""
    for name in ("iat", "nbf"):
        if name in claims and (value := _integer(claims, name)) > stamp + skew:
            raise RejectedError("token_not_yet_valid",
                                f"the JWT's {name} {_iso(value)} is in the future: check "
                                "this server's clock")
    if "exp" in claims and (exp := _integer(claims, "exp")) <= stamp - skew:
        raise RejectedError("token_expired",
                            f"the JWT expired at {_iso(exp)}; the marketplace retries with a "
                            "fresh one")


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _integer(claims: Mapping[str, Any], name: str) -> int:
    try:
        return int(claims[name])
    except (ValueError, TypeError, OverflowError) as exc:  # NaN, infinities, non-numbers
        raise MalformedError(f"the JWT claim {name} must be a number of seconds since the "
                             "epoch") from exc


def _iso(seconds: int) -> str:
    try:
        return untrusted.from_timestamp(seconds).isoformat()
    except untrusted.Refused:
        text = str(seconds)
        return f"{text if len(text) <= 20 else text[:20] + '...'} seconds since the epoch"


def decode_event(claims: Mapping[str, Any]) -> inbox.Incoming:
    """The inbox event a verified JWT carries; raises `MalformedError`.

    Everything in it must be storable (`untrusted.check`): text that is UTF-8 without NUL,
    finite numbers, little nesting, times between `untrusted.EARLIEST` and `LATEST`.
    """
    _storable(claims, "the JWT's claims")
    envelope = _json_object(claims.get("data"), "the JWT claim `data`")
    event_type = _text(envelope, "eventType", MAX_EVENT_TYPE, "`data`")
    instance_id = _text(envelope, "instanceId", MAX_ID, "`data`")
    fields = _json_object(envelope.get("data", {}), "`data.data`")
    product = fields.get("vendorProductId")
    if product is not None and (not isinstance(product, str) or len(product) > MAX_PRODUCT):
        raise MalformedError(
            f"vendorProductId must be a string of at most {MAX_PRODUCT} characters")
    when = _time(fields, "operationTimeStamp")
    if when is None:
        # install/remove events carry no operationTimeStamp: the signing time orders them
        iat = claims.get("iat")
        if iat is None:
            raise MalformedError(f"{event_type} has neither operationTimeStamp nor the JWT's iat: "
                                 "its time is unknown")
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            raise MalformedError("the JWT claim iat must be a number of seconds since the epoch")
        try:
            when = untrusted.from_timestamp(iat)
        except untrusted.Refused as exc:
            raise MalformedError(f"the JWT claim iat: {exc}") from exc
    return inbox.Incoming(
        instance_id=instance_id, event_type=event_type, operation_time=when,
        product_id=product or None, expires_at=_time(fields, "expiresOn"),
        payload=dict(fields))


def parse(token: str, key: rsa.RSAPublicKey, now: dt.datetime) -> inbox.Incoming:
    """Verify and decode one webhook body."""
    return decode_event(verify(token, key, now))


def _storable(value: object, what: str) -> None:
    try:
        untrusted.check(value)
    except untrusted.Refused as exc:
        raise MalformedError(f"{what} cannot be stored: {exc}") from exc


def _json_object(value: object, what: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = untrusted.loads(value)
        except untrusted.Refused as exc:
            raise MalformedError(f"{what} is not valid JSON: {exc}") from exc
        _storable(value, what)
    if not isinstance(value, dict):
        raise MalformedError(f"{what} must be a JSON object (or a string holding one)")
    return value


def _text(obj: Mapping[str, Any], name: str, limit: int, where: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise MalformedError(f"{where} needs {name}: a non-empty string of at most {limit} "
                             "characters")
    return value


def _time(fields: Mapping[str, Any], name: str) -> dt.datetime | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    try:
        moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise MalformedError(f"{name} must be an ISO 8601 time with a zone, e.g. "
                             f"2026-01-10T12:00:00.000Z; got {value!r}")
    try:
        return untrusted.utc(moment)
    except untrusted.Refused as exc:
        raise MalformedError(f"{name}: {exc}") from exc


def sign_event(
    private_key: rsa.RSAPrivateKey, event_type: str, instance_id: str,
    fields: Mapping[str, Any], *, now: dt.datetime, ttl: dt.timedelta = dt.timedelta(minutes=5),
) -> str:
    """A webhook body as the marketplace would post it (for development, tests, benchmarks)."""
    envelope = {"eventType": event_type, "instanceId": instance_id,
                "data": json.dumps(dict(fields))}
    issued = int(now.timestamp())
    claims = {"data": json.dumps(envelope), "iat": issued,
              "exp": issued + int(ttl.total_seconds())}
    return jwt.encode(claims, private_key, algorithm=ALGORITHM)


def event_fields(
    event_type: str, *, product: str | None = None, at: dt.datetime | None = None,
    expires: dt.datetime | None = None, previous_product: str | None = None,
    cycle: str = "MONTHLY", invoice_id: str | None = None,
) -> dict[str, Any]:
    """The inner `data` fields of an event in the marketplace's format."""
    fields: dict[str, Any] = {}
    if product is not None:
        fields["vendorProductId"] = product
        fields["cycle"] = cycle
    if previous_product is not None:
        fields["previousVendorProductId"] = previous_product
    if at is not None:
        fields["operationTimeStamp"] = marketplace_time(at)
    if expires is not None:
        fields["expiresOn"] = marketplace_time(expires)
    if invoice_id is not None:
        fields["invoiceId"] = invoice_id
    return fields


def marketplace_time(moment: dt.datetime) -> str:
    """`2026-01-10T12:00:00.000Z`, the marketplace's timestamp format."""
    utc = moment.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
