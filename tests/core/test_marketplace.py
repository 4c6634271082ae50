"""The marketplace client against the stand-in: tokens cached, the rate held, errors typed."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest

from creditsync import marketplace, marketplace_standin
from tests.support import marketplace as stand
from tests.support.times import T0


@pytest.fixture
def running() -> Iterator[marketplace_standin.Running]:
    with stand.serving() as found:
        yield found


def test_a_paid_instance_is_its_package(running: marketplace_standin.Running) -> None:
    running.standin.set_paid("a", "pro-yearly", cycle="YEARLY", expires=T0)
    seen = stand.client(running).lookup("a")
    assert (seen.instance_id, seen.is_free, seen.package, seen.cycle, seen.expires_at) == (
        "a", False, "pro-yearly", "YEARLY", T0)
    event = seen.as_event()
    assert (event.event_type, event.product_id, event.expires_at) == (
        "MarketplaceSnapshot", "pro-yearly", T0)


def test_a_free_instance_has_no_package(running: marketplace_standin.Running) -> None:
    running.standin.set_free("b")
    seen = stand.client(running).lookup("b")
    assert (seen.is_free, seen.package, seen.as_event().product_id) == (True, None, None)


def test_one_token_per_instance_per_token_lifetime(
    running: marketplace_standin.Running,
) -> None:
    clock = [T0]
    client = marketplace.Client(running.url, stand.APP_ID, stand.APP_SECRET, rate=500,
                                now=lambda: clock[0])
    for _ in range(5):
        client.lookup("a")
    client.lookup("b")
    assert running.standin.token_requests == {"a": 1, "b": 1}
    assert running.standin.instance_requests == {"a": 5, "b": 1}
    clock[0] = T0 + dt.timedelta(seconds=14400) - marketplace.TOKEN_MARGIN  # nearly expired
    client.lookup("a")
    assert running.standin.token_requests == {"a": 2, "b": 1}
    assert client.token_cache_hits == 4


def test_the_request_rate_is_honoured(running: marketplace_standin.Running) -> None:
    """At most `rate` requests per second reach the marketplace (a lower bound on time:
    the client sleeps; no upper bound is asserted)."""
    client = stand.client(running, rate=20)
    started = time.monotonic()
    for n in range(15):  # 30 requests: a token and a lookup each
        client.lookup(f"i{n}")
    assert time.monotonic() - started >= 29 / 20
    times = running.standin.request_times
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= 20 + 1  # one more for arrival jitter at the window's edge


def test_a_429_is_transient_and_its_retry_after_is_honoured(
    running: marketplace_standin.Running,
) -> None:
    client = stand.client(running, rate=1000)
    client.lookup("a")  # the token is cached
    running.standin.fail_with(429, retry_after=0.6, times=1)
    with pytest.raises(marketplace.MarketplaceUnavailable, match="429") as caught:
        client.lookup("a")
    assert caught.value.retry_after == 0.6
    started = time.monotonic()
    client.lookup("a")  # waits out the Retry-After first
    assert time.monotonic() - started >= 0.5


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_transient(running: marketplace_standin.Running, status: int) -> None:
    running.standin.fail_with(status)
    with pytest.raises(marketplace.MarketplaceUnavailable, match=str(status)):
        stand.client(running).lookup("a")


def test_a_timeout_is_transient(running: marketplace_standin.Running) -> None:
    running.standin.delay = 0.5
    client = marketplace.Client(running.url, stand.APP_ID, stand.APP_SECRET, rate=100,
                                timeout=0.2)
    with pytest.raises(marketplace.MarketplaceUnavailable, match="did not answer"):
        client.lookup("a")


def test_wrong_credentials_are_rejected_not_retried(
    running: marketplace_standin.Running,
) -> None:
    client = stand.client(running, app_secret="not-the-secret")
    with pytest.raises(marketplace.CredentialsRejected, match="CREDITSYNC_WIX_APP_ID"):
        client.lookup("a")


def test_a_hook_hears_every_request_and_every_cached_token(
    running: marketplace_standin.Running,
) -> None:
    heard: list[tuple[str, str]] = []
    client = marketplace.Client(running.url, stand.APP_ID, stand.APP_SECRET, rate=500,
                                on_request=lambda e, o, _s: heard.append((e, o)))
    client.lookup("a")
    client.lookup("a")
    assert heard == [("token", "ok"), ("instance", "ok"), ("token", "cached"),
                     ("instance", "ok")]
