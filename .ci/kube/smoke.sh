#!/usr/bin/env bash
# Smoke test of the test Kubernetes control plane: builds/fetches the binaries if needed,
# starts tests/support/kubecluster.py's KubeCluster and checks kubectl, RBAC and helm.
set -euo pipefail
cd "$(dirname "$0")/../.."

CREDITSYNC_KUBE_APISERVER=$(.ci/kube/build-apiserver.sh)
CREDITSYNC_KUBE_TOOLS=$(.ci/kube/tools.sh)
export CREDITSYNC_KUBE_APISERVER CREDITSYNC_KUBE_TOOLS

PYTHONPATH=. python3 - <<'PY'
import time

from tests.support.kubecluster import KubeCluster, helm, kubectl

t0 = time.monotonic()
cluster = KubeCluster()
sa = cluster.add_service_account("creditsync", "operator")
with cluster:
    print(f"smoke: cluster ready at {cluster.server} in {time.monotonic() - t0:.1f}s")
    ns = kubectl(cluster, "get", "ns", "-o", "name", check=True).stdout.split()
    assert "namespace/default" in ns, ns
    print(f"smoke: admin kubectl get ns -> {' '.join(ns)}")
    r = kubectl(cluster, "auth", "can-i", "list", "pods", kubeconfig=cluster.kubeconfig(sa))
    assert r.stdout.strip() == "no" and r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    r = kubectl(cluster, "auth", "can-i", "list", "pods", check=True)
    assert r.stdout.strip() == "yes", r.stdout
    print("smoke: can-i list pods: service account -> no, admin -> yes")
    v = helm(cluster, "version", "--short", check=True).stdout.strip()
    helm(cluster, "list", "--all-namespaces", check=True)
    print(f"smoke: helm {v} lists releases")
    workdir = cluster.workdir
assert not workdir.exists(), workdir
print(f"smoke: OK, stopped and cleaned up in {time.monotonic() - t0:.1f}s total")
PY
