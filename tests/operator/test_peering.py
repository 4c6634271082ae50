"""The peering object is made before kopf starts; missing CRDs or RBAC say what to do."""

from __future__ import annotations

import logging
from typing import Any

import kubernetes
import pytest

from creditsync_operator import peering


class FakeApi:
    def __init__(self, status: int | None = None) -> None:
        self.status = status
        self.created: list[tuple[Any, ...]] = []
        self.attempted: list[tuple[Any, ...]] = []

    def _create(self, *args: Any) -> None:
        self.attempted.append(args)
        if self.status is not None:
            raise kubernetes.client.ApiException(status=self.status, reason="Nope")
        self.created.append(args)

    create_namespaced_custom_object = _create
    create_cluster_custom_object = _create


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(kubernetes.config, "load_config", lambda **_: None)
    monkeypatch.setattr(kubernetes.client, "CustomObjectsApi", lambda: fake)
    return fake


def test_one_kopfpeering_per_namespace_and_none_for_patterns(api: FakeApi) -> None:
    peering.ensure(["a", "b", "team-*"], clusterwide=False)
    assert [(c[2], c[4]["metadata"]) for c in api.created] == [
        ("a", {"name": "creditsync", "namespace": "a"}),
        ("b", {"name": "creditsync", "namespace": "b"}),
    ]
    assert {c[:2] for c in api.created} == {("kopf.dev", "v1")}


def test_cluster_wide_uses_a_clusterkopfpeering(api: FakeApi) -> None:
    peering.ensure([], clusterwide=True)
    assert api.created == [("kopf.dev", "v1", "clusterkopfpeerings", {
        "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
        "metadata": {"name": "creditsync"}})]


def test_an_existing_object_is_fine(api: FakeApi, caplog: pytest.LogCaptureFixture) -> None:
    """409 Conflict: the object is there already; no error, and on to the next namespace."""
    api.status = 409
    with caplog.at_level(logging.INFO):
        peering.ensure(["a", "b"], clusterwide=False)
    assert [c[2] for c in api.attempted] == ["a", "b"]
    assert api.created == []
    assert "created" not in caplog.text


@pytest.mark.parametrize(("status", "says"), [
    (404, "the peering CRDs are not installed; apply deploy/crds/kopf-peering.yaml"),
    (403, "not allowed to create KopfPeering a/creditsync (RBAC)"),
    (500, "cannot create KopfPeering a/creditsync: 500 Nope"),
])
def test_problems_say_what_to_do(api: FakeApi, status: int, says: str) -> None:
    api.status = status
    with pytest.raises(peering.PeeringError, match=says.replace("(", r"\(").replace(")", r"\)")):
        peering.ensure(["a"], clusterwide=False)
