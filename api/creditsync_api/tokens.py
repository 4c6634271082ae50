"""Instance tokens: who is calling, signed by the marketplace with the app's secret.

Format `<signature>.<payload>`: payload is base64url (no padding) JSON with `instanceId`,
`signDate`, `vendorProductId`, `uid`, `permissions`, `aid`; signature is base64url
HMAC-SHA256 of the payload part with `CREDITSYNC_APP_SECRET`. The instance id an endpoint
acts on comes only from a verified token, never from plain request data.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from creditsync_api import untrusted

MAX_ID = 100
CLOCK_SKEW = dt.timedelta(minutes=5)


class TokenError(Exception):
    """The caller is not an identified user of an instance; `code` says why (answer 401)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class InstanceToken:
    """A verified instance token's claims."""

    instance_id: str
    sign_date: dt.datetime
    uid: str
    permissions: str | None
    vendor_product_id: str | None
    aid: str | None


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload_part: str) -> str:
    digest = hmac.new(secret.encode(), payload_part.encode("ascii"), hashlib.sha256).digest()
    return _b64encode(digest)


def verify(
    token: str, secret: str, *, now: dt.datetime, max_age: dt.timedelta
) -> InstanceToken:
    """The verified claims; raises `TokenError` with code `malformed_token`,
    `bad_signature`, `token_expired` or `anonymous_token`."""
    signature, sep, payload_part = token.strip().partition(".")
    if not sep or not signature or not payload_part or not payload_part.isascii():
        raise TokenError("malformed_token",
                            "the instance token is not `<signature>.<payload>`: pass the "
                            "`instance` parameter the marketplace gives the dashboard")
    expected = _signature(secret, payload_part)
    if not hmac.compare_digest(expected.encode(), signature.rstrip("=").encode()):
        raise TokenError("bad_signature",
                            "the instance token's signature does not match "
                            "CREDITSYNC_APP_SECRET: it was forged, altered, or issued for "
                            "another app")
    claims = _claims(payload_part)
    sign_date = _sign_date(claims.get("signDate"))
    if sign_date > now + CLOCK_SKEW:
        raise TokenError("malformed_token",
                            f"the instance token's signDate {sign_date.isoformat()} is in the "
                            "future: check this server's clock")
    age = now - sign_date
    if age > max_age:
        raise TokenError("token_expired",
                            f"the instance token was signed {_hours(age)} ago (at most "
                            f"{_hours(max_age)} is accepted): reload the dashboard for a "
                            "fresh one")
    instance_id = claims.get("instanceId")
    if not isinstance(instance_id, str) or not instance_id or len(instance_id) > MAX_ID:
        raise TokenError("malformed_token", "the instance token has no valid instanceId")
    uid = claims.get("uid")
    if not isinstance(uid, str) or not uid:
        raise TokenError("anonymous_token",
                            "the instance token belongs to an anonymous site visitor (aid "
                            "only, no uid): credits are only shown to the site's users and "
                            "the app's backend")
    return InstanceToken(instance_id=instance_id, sign_date=sign_date, uid=uid,
                         permissions=_optional(claims, "permissions"),
                         vendor_product_id=_optional(claims, "vendorProductId"),
                         aid=_optional(claims, "aid"))


def _claims(payload_part: str) -> dict[str, Any]:
    """The payload's claims: JSON that can be stored (`untrusted.check`)."""
    try:
        claims = untrusted.loads(_b64decode(payload_part))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("malformed_token",
                            "the instance token's payload is not base64url JSON") from exc
    if not isinstance(claims, dict):
        raise TokenError("malformed_token", "the instance token's payload is not an object")
    try:
        untrusted.check(claims)
    except untrusted.Refused as exc:
        raise TokenError("malformed_token",
                         f"the instance token's payload cannot be accepted: {exc}") from exc
    return claims


def _sign_date(value: object) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise TokenError("malformed_token",
                            "the instance token has no valid signDate (ISO 8601 time)")
    try:
        return untrusted.utc(moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment)
    except untrusted.Refused as exc:
        raise TokenError("malformed_token", f"the instance token's signDate: {exc}") from exc


def _optional(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and value else None


def _hours(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.0f} hours" if hours >= 1 else f"{delta.total_seconds() / 60:.0f} minutes"


def sign(
    secret: str, instance_id: str, *, now: dt.datetime, uid: str | None = "owner",
    aid: str | None = None, permissions: str | None = "OWNER",
    vendor_product_id: str | None = None,
) -> str:
    """A token as the marketplace would issue it (for development, tests, benchmarks).

    `uid=None` with an `aid` makes an anonymous visitor's token.
    """
    claims: dict[str, Any] = {
        "instanceId": instance_id,
        "signDate": now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{now.microsecond // 1000:03d}Z",
        "vendorProductId": vendor_product_id,
        "permissions": permissions,
    }
    if uid is not None:
        claims["uid"] = uid
    if aid is not None:
        claims["aid"] = aid
    payload_part = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    return f"{_signature(secret, payload_part)}.{payload_part}"
