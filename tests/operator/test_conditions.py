"""Conditions: transition times move only with the status; patch functions edit the body."""

from __future__ import annotations

import datetime as dt
from typing import Any

from creditsync_operator import conditions
from creditsync_operator.conditions import Condition
from tests.support.times import T0

LATER = T0 + dt.timedelta(minutes=5)


def test_a_new_condition_gets_the_time_and_generation() -> None:
    merged = conditions.merge([], [Condition("Ready", "True", "Synced", "ok")],
                              generation=3, now=T0)
    assert merged == [{"type": "Ready", "status": "True", "reason": "Synced", "message": "ok",
                       "lastTransitionTime": "2026-01-10T12:00:00Z", "observedGeneration": 3}]


def test_the_transition_time_stays_while_the_status_stays() -> None:
    first = conditions.merge([], [Condition("Ready", "True", "Synced", "a")], generation=1,
                             now=T0)
    second = conditions.merge(first, [Condition("Ready", "True", "DryRun", "b")], generation=2,
                              now=LATER)
    assert second[0]["lastTransitionTime"] == "2026-01-10T12:00:00Z"
    assert (second[0]["reason"], second[0]["message"], second[0]["observedGeneration"]) == (
        "DryRun", "b", 2)
    third = conditions.merge(second, [Condition("Ready", "False", "SyncFailed", "c")],
                             generation=2, now=LATER)
    assert third[0]["lastTransitionTime"] == "2026-01-10T12:05:00Z"


def test_other_conditions_and_their_order_are_kept() -> None:
    foreign = {"type": "Custom", "status": "True", "reason": "Theirs"}
    existing = [{"type": "Degraded", "status": "False", "reason": "AsExpected",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}, foreign]
    merged = conditions.merge(existing, [Condition("Ready", "True", "Synced", "x"),
                                         Condition("Degraded", "True", "PlanMissing", "y")],
                              generation=None, now=T0)
    assert [c["type"] for c in merged] == ["Degraded", "Custom", "Ready"]
    assert merged[1] == foreign
    assert "observedGeneration" not in merged[0]


def test_an_empty_message_is_left_out() -> None:
    # kube-apiserver 1.20 turns "" inside a list-map item into null and rejects the patch
    merged = conditions.merge([], [Condition("Degraded", "False", "AsExpected")],
                              generation=1, now=T0)
    assert "message" not in merged[0]


def test_patch_fn_edits_a_body_without_status() -> None:
    body: dict[str, Any] = {"metadata": {"name": "x"}}
    conditions.patch_fn([Condition("Ready", "False", "InvalidSpec", "bad")], generation=4,
                        now=T0)(body)
    assert body["status"]["conditions"][0]["reason"] == "InvalidSpec"
    assert conditions.is_true(body["status"]["conditions"], "Ready") is False
    assert conditions.get(body["status"]["conditions"], "Converged") is None
