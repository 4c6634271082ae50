"""The README's "Events to the app" section: every event type is listed, and the
verification example for app developers runs as printed against a signed delivery."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import standardwebhooks

from creditsync import delivery, enums, outbox
from tests.support.receiver import new_secret
from tests.test_readme import section


def test_every_event_type_is_in_the_table() -> None:
    text = section("Events to the app")
    assert [e.value for e in enums.AppEvent if f"| `{e.value}` |" not in text] == []


def test_the_verification_example_accepts_a_delivery_and_refuses_a_forgery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", section("Events to the app"), re.DOTALL)
    assert len(blocks) == 1
    secret = new_secret()
    monkeypatch.setenv("CREDITSYNC_APP_WEBHOOK_SECRET", secret)
    scope: dict[str, object] = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 (our own README)
    handle = scope["handle_creditsync_event"]
    assert callable(handle)
    payload = outbox.payload(outbox.Event("i1", enums.AppEvent.CREDITS_DEPLETED, {}),
                             dt.datetime.now(dt.UTC))
    body = outbox.body(payload)
    client = delivery.Client("http://127.0.0.1:9/unused", secret)
    try:
        headers = client.headers("msg_1", body, dt.datetime.now(dt.UTC))
    finally:
        client.close()
    assert handle(body.encode(), headers) == payload
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        handle(body.replace("i1", "i2").encode(), headers)
