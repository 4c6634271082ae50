"""The KopfPeering object that lets replicas see each other, created before kopf starts.

kopf only peers through an existing peering object and never creates one; without it, two
replicas would both act (the convergence lock would still keep their runs apart). So
`creditsync operator` makes sure the `creditsync` KopfPeering exists in each namespace it
serves (a ClusterKopfPeering with `--all-namespaces`). The peering CRDs themselves are in
`deploy/crds/kopf-peering.yaml`; when they are missing this says so instead of letting kopf
wait for them forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import kubernetes

from creditsync_operator import resources

log = logging.getLogger("creditsync.operator.peering")

CRDS_HINT = ("apply deploy/crds/kopf-peering.yaml (or the Helm chart), or run a single "
             "replica with --standalone")


class PeeringError(RuntimeError):
    """The peering object cannot be made; the message says what to do."""


def is_pattern(namespace: str) -> bool:
    """Whether `--namespace` names a glob rather than one namespace."""
    return any(ch in namespace for ch in "*?[!")


def ensure(namespaces: Sequence[str], *, clusterwide: bool,
           name: str = resources.PEERING_NAME) -> None:
    """Create the peering object(s) unless they exist (blocking; before kopf runs)."""
    try:
        kubernetes.config.load_config()  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise PeeringError(f"cannot load a Kubernetes configuration: {exc}") from exc
    api = kubernetes.client.CustomObjectsApi()
    group, version = resources.PEERING_GROUP, resources.PEERING_VERSION
    if clusterwide:
        body = {"apiVersion": f"{group}/{version}", "kind": "ClusterKopfPeering",
                "metadata": {"name": name}}
        _create(f"ClusterKopfPeering {name}", api.create_cluster_custom_object,
                group, version, "clusterkopfpeerings", body)
        return
    for namespace in namespaces:
        if is_pattern(namespace):
            log.warning("cannot create KopfPeering %s for the namespace pattern %r: create it "
                        "in each matching namespace", name, namespace)
            continue
        body = {"apiVersion": f"{group}/{version}", "kind": "KopfPeering",
                "metadata": {"name": name, "namespace": namespace}}
        _create(f"KopfPeering {namespace}/{name}", api.create_namespaced_custom_object,
                group, version, namespace, "kopfpeerings", body)


def _create(what: str, call: Callable[..., object], *args: object) -> None:
    try:
        call(*args)
    except kubernetes.client.ApiException as exc:
        if exc.status == 409:
            return
        if exc.status == 404:
            raise PeeringError(f"cannot create {what}: the peering CRDs are not installed; "
                               f"{CRDS_HINT}") from exc
        if exc.status == 403:
            raise PeeringError(
                f"not allowed to create {what} (RBAC): grant create on "
                f"{resources.PEERING_GROUP} peerings, or create it yourself") from exc
        raise PeeringError(f"cannot create {what}: {exc.status} {exc.reason}") from exc
    log.info("created %s for peering", what)
