"""The webhook's hand-written JWT checks accept exactly what PyJWT's `jwt.decode` accepts.

`wix.verify` is a fast path (one regular expression for the alphabet instead of PyJWT's
per-character check) that takes the request's clock; this proves, over generated tokens, that
it agrees with `jwt.decode(token, key, algorithms=["RS256"], leeway=60)` at the same instant:
time claims that are NaN, infinities, huge, fractional, near the leeway's edges, not numbers
or missing; `sub`/`jti`/`aud`; `kid`/`crit`/`b64` headers; other algorithms; forged
signatures. The tokens are well-formed base64url (the body's alphabet is checked before).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any
from unittest import mock

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from creditsync_api import devkeys, wix

NOW = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)
STAMP = int(NOW.timestamp())
MISSING = object()

KEY = devkeys.generate_private_key()
OTHER_KEY = devkeys.generate_private_key()
_RS256 = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256)


class _Frozen(dt.datetime):
    """PyJWT's clock (`datetime.now(tz=timezone.utc)`), stopped at NOW."""

    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> _Frozen:
        return cls.fromtimestamp(NOW.timestamp(), tz)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _token(header: dict[str, Any], claims: dict[str, Any], key: rsa.RSAPrivateKey) -> str:
    signing_input = (f"{_b64(json.dumps(header).encode())}."
                     f"{_b64(json.dumps(claims).encode())}")
    signature = _RS256.sign(signing_input.encode("ascii"), key)
    return f"{signing_input}.{_b64(signature)}"


near_edges = st.sampled_from([-60, 60]).flatmap(
    lambda edge: st.integers(STAMP + edge - 3, STAMP + edge + 3))
fractional = st.floats(STAMP - 200, STAMP + 200, allow_nan=False)
numbers = st.one_of(
    near_edges, fractional, st.integers(STAMP - 10**6, STAMP + 10**6),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e300, -1e300, 10**400,
                     -10**400, 0, -1, 2**63, 2**64 + 1, 1e308]),
    st.floats(), st.integers(),
)
not_numbers = st.one_of(
    st.none(), st.booleans(), st.text(max_size=12),
    st.sampled_from([str(STAMP), f" {STAMP + 10**6} ", "1_700_000_000", "1e12", "NaN", "-0"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=1),
)
time_value = st.one_of(st.just(MISSING), numbers, not_numbers)
other_value = st.one_of(st.just(MISSING), st.text(max_size=8), st.integers(), st.none(),
                        st.booleans(), st.lists(st.text(max_size=3), max_size=2))
headers = st.fixed_dictionaries({
    "alg": st.sampled_from(["RS256", "RS256", "RS256", "RS512", "HS256", "none", "", 256]),
}, optional={
    "typ": st.sampled_from(["JWT", "jwt", 7]),
    "kid": st.one_of(st.text(max_size=5), st.integers(), st.none()),
    "crit": st.one_of(st.just(["b64"]), st.just([]), st.just(["exp"]), st.just("b64"),
                      st.just(["b64", "x"]), st.just([7])),
    "b64": st.sampled_from([True, False, "false", None]),
})


def _claims(draw: st.DrawFn) -> dict[str, Any]:
    claims: dict[str, Any] = {"data": draw(st.text(max_size=10))}
    for name in ("exp", "iat", "nbf"):
        value = draw(time_value)
        if value is not MISSING:
            claims[name] = value
    for name in ("sub", "jti", "aud", "iss"):
        value = draw(other_value)
        if value is not MISSING:
            claims[name] = value
    return claims


@st.composite
def tokens(draw: st.DrawFn) -> str:
    key = draw(st.sampled_from([KEY, KEY, KEY, OTHER_KEY]))
    return _token(draw(headers), _claims(draw), key)


def _ours(token: str) -> dict[str, Any] | None:
    try:
        return wix.verify(token, KEY.public_key(), NOW)
    except (wix.RejectedError, wix.MalformedError):
        return None


def _pyjwt(token: str) -> dict[str, Any] | None:
    with mock.patch("jwt.api_jwt.datetime", _Frozen):
        try:
            return jwt.decode(token, KEY.public_key(), algorithms=["RS256"], leeway=60)
        except jwt.InvalidTokenError:
            return None


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokens())
def test_the_fast_path_accepts_exactly_what_pyjwt_accepts(token: str) -> None:
    ours, theirs = _ours(token), _pyjwt(token)

    assert (ours is None) == (theirs is None), (ours, theirs)
    if ours is not None:
        assert json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True)


@pytest.mark.parametrize(("claims", "accepted"), [
    ({"exp": STAMP - 60}, False), ({"exp": STAMP - 59}, True),
    ({"exp": STAMP - 59.5}, False),  # int() truncates, as PyJWT reads it
    ({"iat": STAMP + 60}, True), ({"iat": STAMP + 60.9}, True), ({"iat": STAMP + 61}, False),
    ({"exp": float("nan")}, False), ({"exp": float("-inf")}, False), ({"exp": -1e300}, False),
    ({"iat": 1e300}, False), ({"exp": None}, False), ({"exp": True}, False),
    ({"exp": str(STAMP + 100)}, True), ({"nbf": float("inf")}, False), ({}, True),
    ({"aud": "someone"}, False), ({"aud": ""}, True), ({"sub": 7}, False),
])
def test_known_cases_agree(claims: dict[str, Any], accepted: bool) -> None:
    token = _token({"alg": "RS256", "typ": "JWT"}, {"data": "{}", **claims}, KEY)

    assert (_ours(token) is not None) is accepted
    assert (_pyjwt(token) is not None) is accepted
