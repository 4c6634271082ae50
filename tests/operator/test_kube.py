"""Status writes through the Kubernetes API: exact merge patches; a refused precondition is
a `Conflict`."""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest

from creditsync_operator import kube


class FakeCustomObjects:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[tuple[Any, ...]] = []

    def patch_namespaced_custom_object_status(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((*args, kwargs))
        if self.error is not None:
            raise self.error


def test_a_status_write_is_a_merge_patch_of_the_status_subresource() -> None:
    api = FakeCustomObjects()
    kube.StatusApi(api).patch_status("creditplans", "ns", "pro", {"instances": 20})
    assert api.calls == [("creditsync.io", "v1alpha1", "ns", "creditplans", "pro",
                          {"status": {"instances": 20}},
                          {"_content_type": "application/merge-patch+json"})]


def test_a_guarded_write_names_the_resource_version_it_was_computed_from() -> None:
    api = FakeCustomObjects()
    kube.StatusApi(api).patch_status("creditsyncs", "ns", "cs", {"drifted": 0},
                                     resource_version="42")
    assert api.calls[0][5] == {"status": {"drifted": 0},
                               "metadata": {"resourceVersion": "42"}}


def test_a_refused_precondition_is_a_conflict_and_other_errors_pass_through() -> None:
    conflict = kubernetes.client.ApiException(status=409, reason="Conflict")
    with pytest.raises(kube.Conflict, match="creditsyncs ns/cs changed meanwhile"):
        kube.StatusApi(FakeCustomObjects(conflict)).patch_status(
            "creditsyncs", "ns", "cs", {}, resource_version="1")
    forbidden = kubernetes.client.ApiException(status=403, reason="Forbidden")
    with pytest.raises(kubernetes.client.ApiException) as raised:
        kube.StatusApi(FakeCustomObjects(forbidden)).patch_status("creditsyncs", "ns", "cs", {})
    assert raised.value.status == 403
