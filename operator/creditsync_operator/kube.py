"""Status writes for the daemons, straight through the Kubernetes API.

kopf applies a daemon's `patch` kwarg only when the daemon function exits (or raises to be
restarted), never between the iterations of its loop, and its own patching is internal. So
the `CreditSync` and `CreditPlan` daemons merge-patch their status subresource with the
official client, the same `patch` on `.../status` that kopf's own writes use (granted in
`deploy/rbac.yaml` and the chart's Role). Credentials come from where kopf's login takes
them: the in-cluster service account, else the kubeconfig.

A write that replaces a list (the conditions) carries the `resourceVersion` it was computed
from, so that the API server refuses it (`Conflict`) when the object changed meanwhile —
the guarantee kopf gives `patch.fns`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kubernetes

from creditsync_operator import resources


class Conflict(RuntimeError):
    """The object changed since the `resourceVersion` the write was computed from."""


@dataclass(frozen=True)
class StatusApi:
    """Merge-patches of our resources' status subresource (blocking calls)."""

    api: Any  # kubernetes.client.CustomObjectsApi

    def patch_status(self, plural: str, namespace: str, name: str, status: Mapping[str, Any],
                     *, resource_version: str | None = None) -> None:
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            self.api.patch_namespaced_custom_object_status(
                resources.GROUP, resources.VERSION, namespace, plural, name, body,
                _content_type="application/merge-patch+json")
        except kubernetes.client.ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"{plural} {namespace}/{name} changed meanwhile") from exc
            raise


def connect() -> StatusApi:
    """A client with the operator's own credentials (in-cluster first, as kopf's login)."""
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return StatusApi(kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient()))
