"""The Helm chart, the deploy/ manifests and the Dockerfile, checked without a cluster.

`helm lint --strict` and `helm template` over every values file in tests/chart/values/,
the schema's and the templates' refusals (with their messages), offline validation of
every rendered manifest (kubernetes-validate's bundled schemas; our CRDs' own schemas for
our resources), the alert rules through promtool (syntax and unit tests), the values
documentation, `kubectl kustomize deploy/` and hadolint. tests/e2e/test_chart.py installs
the chart into a real API server.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import generate_latest

from creditsync import catalog, clock, config, policy, runner
from creditsync.storage import database, schema
from creditsync_api import main as api_main
from creditsync_api import metrics as api_metrics
from tests.chart import render, valuesdoc
from tests.chart.render import Manifest, find
from tests.support.kubecluster import find_tools

HERE = Path(__file__).resolve().parent
DEFAULTS = render.VALUES["defaults"]
# kubernetes-validate bundles no v1.20 schemas (the test API server's version): the oldest
# it has, and the newest
K8S_VERSIONS = (kubernetes_validate.utils.all_versions()[0],
                kubernetes_validate.utils.latest_version())
PROMETHEUS_KINDS = {"ServiceMonitor", "PrometheusRule"}
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # in-cluster config
INTERNAL_ROUTES = {"/healthz", "/readyz", "/metrics", "/docs", "/docs/assets/{name}",
                   "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


def pods(manifests: list[Manifest]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload."""
    for m in manifests:
        if m["kind"] in ("Deployment", "Job"):
            yield f"{m['kind']}/{m['metadata']['name']}", m["spec"]["template"]["spec"]
        elif m["kind"] == "Pod":
            yield f"Pod/{m['metadata']['name']}", m["spec"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize(("sets", "workers"), [
    ((), "1"),  # a CPU request of 100m, no limit
    (("api.resources.limits.cpu=1500m",), "2"),
    (("api.resources.limits.cpu=2",), "2"),
    (("api.resources.limits.cpu=0.5",), "1"),
    (("api.resources.limits.cpu=2", "api.workers=3"), "3"),
])
def test_api_workers_follow_the_cpu_limit(sets: tuple[str, ...], workers: str) -> None:
    api = containers(render.render(DEFAULTS, sets=sets))["api"]
    assert f"--workers={workers}" in api["args"]


def containers(manifests: list[Manifest], kind: str = "Deployment") -> dict[str, Any]:
    spec = find(manifests, kind)["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}


# ---- the chart as a whole --------------------------------------------------------------


def test_the_chart_crds_are_the_canonical_ones() -> None:
    chart = {p.name: p.read_bytes() for p in (render.CHART / "crds").iterdir()}
    deploy = {p.name: p.read_bytes() for p in (render.DEPLOY / "crds").iterdir()}
    assert set(chart) == set(deploy), "charts/creditsync/crds/ and deploy/crds/ list other files"
    differ = sorted(name for name in chart if chart[name] != deploy[name])
    assert not differ, f"copy deploy/crds/{differ[0]} to charts/creditsync/crds/ (they differ)"


def test_no_category_is_a_kind_s_name() -> None:
    """kubectl expands a category before it looks for a kind: a category named like a kind
    turns `kubectl get creditsync NAME` into "you must specify only one resource"."""
    crds = [crd for path in sorted((render.DEPLOY / "crds").glob("*.yaml"))
            for crd in yaml.safe_load_all(path.read_text()) if crd]
    names: set[str] = set()
    categories: set[str] = set()
    for crd in crds:
        spec = crd["spec"]["names"]
        names |= {spec["plural"], spec.get("singular", spec["kind"].lower()),
                  spec["kind"].lower(), *spec.get("shortNames", [])}
        categories |= set(spec.get("categories", []))
    assert {"creditsync", "creditsyncs", "csync", "creditplan", "cplan"} <= names
    assert categories == {"creditsync-all"}
    assert categories & names == set()

@pytest.mark.parametrize("name", sorted(render.VALUES))
def test_helm_lint_strict_passes(name: str) -> None:
    done = render.lint(render.VALUES[name])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout


def test_defaults_render_one_pod_with_the_operator_and_the_api() -> None:
    out = render.render(DEFAULTS)
    regular = [m for m in out if not render.is_hook(m)]
    assert render.kinds(regular) == [
        "CreditPlan", "CreditPlan", "CreditPlan", "CreditPlan", "CreditSync", "Deployment",
        "PodDisruptionBudget", "Role", "RoleBinding", "Secret", "Service", "ServiceAccount"]
    deployment = find(out, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "creditsync"
    operator, api = spec["containers"]
    assert (operator["name"], api["name"]) == ("operator", "api")
    assert operator["image"] == api["image"] == "creditsync:0.1.0"
    assert operator["args"] == ["--log-level=INFO", "--log-json", "operator",
                                "--namespace=creditsync", "--liveness=http://0.0.0.0:8081/healthz"]
    assert api["args"] == ["--log-level=INFO", "--log-json", "api", "--host=0.0.0.0",
                           "--port=8080", "--workers=1"]
    assert operator["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # each container gets the secrets it needs and no others
    secret = {"secretKeyRef": {"name": "creditsync", "key": "databaseUrl"}}
    assert env_of(operator) == {
        "CREDITSYNC_DATABASE_URL": secret, "CREDITSYNC_ALERT_THROTTLE": "15m",
        "CREDITSYNC_USAGE_ON_PLAN_CHANGE": "Reset", "CREDITSYNC_EXPIRY_GRACE_PERIOD": "0s",
        "CREDITSYNC_LOW_CREDIT_THRESHOLDS": "20%,5%", "CREDITSYNC_BATCH_SIZE": "5000"}
    assert set(env_of(api)) == {
        "CREDITSYNC_DATABASE_URL", "CREDITSYNC_WIX_PUBLIC_KEY", "CREDITSYNC_APP_SECRET",
        "CREDITSYNC_ADMIN_TOKEN", "CREDITSYNC_INSTANCE_TOKEN_MAX_AGE",
        "CREDITSYNC_USAGE_ON_PLAN_CHANGE", "CREDITSYNC_EXPIRY_GRACE_PERIOD",
        "CREDITSYNC_LOW_CREDIT_THRESHOLDS", "CREDITSYNC_BATCH_SIZE"}
    assert sorted(find(out, "Secret", "creditsync")["data"]) == [
        "adminToken", "appSecret", "databaseUrl", "wixPublicKey"]
    service = find(out, "Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "creditsync", "app.kubernetes.io/instance": "creditsync",
        "app.kubernetes.io/component": "server"}
    assert find(out, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_defaults_render_the_original_plans_and_a_credit_sync() -> None:
    out = render.render(DEFAULTS)
    plans = {m["metadata"]["name"]: m["spec"] for m in out if m["kind"] == "CreditPlan"}
    assert plans == {
        "free": {"monthlyCredits": 100, "displayName": "Free", "default": True},
        "starter": {"monthlyCredits": 1000, "displayName": "Starter", "default": False},
        "pro": {"monthlyCredits": 5000, "displayName": "Pro", "default": False},
        "scale": {"monthlyCredits": 25000, "displayName": "Scale", "default": False}}
    sync = find(out, "CreditSync")
    assert sync["metadata"]["name"] == "creditsync"
    assert sync["spec"] == {"interval": "60s", "fullScanInterval": "1h", "batchSize": 5000,
                            "usageOnPlanChange": "Reset", "expiryGracePeriod": "0s",
                            "lowCreditThresholds": "20%,5%",
                            "suspend": False, "dryRun": False,
                            "marketplaceAudit": {"interval": "6h"}}
    for m in out:
        if m["apiVersion"] == "creditsync.io/v1alpha1":
            assert m["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    keepless = render.render(DEFAULTS, sets=["keepCustomResources=false"])
    assert all("annotations" not in m["metadata"] for m in keepless
               if m["apiVersion"] == "creditsync.io/v1alpha1")


def test_the_migration_hook_runs_db_upgrade_before_install_and_upgrade() -> None:
    out = render.render(DEFAULTS)
    hooks = {(m["kind"], m["metadata"]["name"]): m["metadata"]["annotations"]
             for m in out if render.is_hook(m)}
    migration = {"helm.sh/hook": "pre-install,pre-upgrade",
                 "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}
    assert hooks == {
        ("Secret", "creditsync-migrate"): {**migration, "helm.sh/hook-weight": "-10"},
        ("ConfigMap", "creditsync-migrate"): {**migration, "helm.sh/hook-weight": "-10"},
        ("Job", "creditsync-migrate"): {**migration, "helm.sh/hook-weight": "0"},
        ("Pod", "creditsync-test-readyz"): {
            "helm.sh/hook": "test",
            "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}}
    job = find(out, "Job")["spec"]["template"]["spec"]
    assert job["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in job  # it needs the database only
    [migrate] = job["containers"]
    assert migrate["args"][-2:] == ["db", "upgrade"]
    assert env_of(migrate) == {
        "CREDITSYNC_DATABASE_URL": {"secretKeyRef": {"name": "creditsync-migrate",
                                                     "key": "databaseUrl"}},
        "CREDITSYNC_PLANS_FILE": "/etc/creditsync/plans.yaml"}
    plans = yaml.safe_load(find(out, "ConfigMap")["data"]["plans.yaml"])
    assert [(p["id"], p["monthlyCredits"]) for p in plans["plans"]] == [
        ("free", 100), ("starter", 1000), ("pro", 5000), ("scale", 25000)]
    assert not any(m["kind"] == "Job" for m in render.render(
        DEFAULTS, sets=["migrations.enabled=false"]))


MARKETPLACE_ENV = {"CREDITSYNC_WIX_APP_ID", "CREDITSYNC_WIX_API_URL",
                   "CREDITSYNC_MARKETPLACE_RATE", "CREDITSYNC_MARKETPLACE_AUDIT_INTERVAL"}


def test_the_marketplace_source_is_off_unless_an_app_id_is_given() -> None:
    out = render.render(DEFAULTS)
    for name, container in containers(out).items():
        assert not MARKETPLACE_ENV & set(env_of(container)), name
    assert "CREDITSYNC_APP_SECRET" not in env_of(containers(out)["operator"])


def test_an_app_id_gives_the_api_and_the_operator_the_marketplace() -> None:
    out = render.render(render.VALUES["marketplace"])
    ops, api = containers(out).values()
    source = {"CREDITSYNC_WIX_APP_ID": "3f7c2a10-0000-4000-8000-000000000001",
              "CREDITSYNC_WIX_API_URL": "https://www.wixapis.com",
              "CREDITSYNC_MARKETPLACE_RATE": "2.5"}
    secret = {"secretKeyRef": {"name": "creditsync", "key": "appSecret"}}
    # the API asks at provisioning and Sync Credits; the operator audits, with the OAuth
    # client secret, on the CreditSync's schedule
    assert {k: v for k, v in env_of(api).items() if k in MARKETPLACE_ENV} == source
    assert env_of(api)["CREDITSYNC_APP_SECRET"] == secret
    assert {k: v for k, v in env_of(ops).items()
            if k in MARKETPLACE_ENV | {"CREDITSYNC_APP_SECRET"}} == {
        **source, "CREDITSYNC_MARKETPLACE_AUDIT_INTERVAL": "3h",
        "CREDITSYNC_APP_SECRET": secret}
    assert find(out, "CreditSync")["spec"]["marketplaceAudit"] == {"interval": "3h"}
    # the app secret from an existing Secret, for both containers
    kept = render.render(render.VALUES["existing-secret"],
                         sets=["marketplace.appId=app-1", "marketplace.auditInterval=0"])
    ops, api = containers(kept).values()
    for container in (ops, api):
        assert env_of(container)["CREDITSYNC_APP_SECRET"] == {
            "secretKeyRef": {"name": "creditsync-secrets", "key": "appSecret"}}
        assert env_of(container)["CREDITSYNC_MARKETPLACE_RATE"] == "5"
    assert env_of(ops)["CREDITSYNC_MARKETPLACE_AUDIT_INTERVAL"] == "0"
    assert find(kept, "CreditSync")["spec"]["marketplaceAudit"] == {"interval": "0"}


def test_existing_secrets_are_referenced_not_copied() -> None:
    out = render.render(render.VALUES["existing-secret"])
    assert not [m for m in out if m["kind"] == "Secret"]
    ops, api = containers(out).values()

    def ref(name: str, key: str, optional: bool = False) -> dict[str, Any]:
        found: dict[str, Any] = {"name": name, "key": key}
        if optional:
            found["optional"] = True
        return {"secretKeyRef": found}

    assert env_of(ops)["CREDITSYNC_DATABASE_URL"] == ref("creditsync-secrets", "databaseUrl")
    # alert targets are optional: a Secret without those keys still starts the pod
    assert env_of(ops)["CREDITSYNC_ALERT_WEBHOOK_URL"] == ref(
        "creditsync-secrets", "alertWebhookUrl", optional=True)
    assert env_of(ops)["CREDITSYNC_ALERT_SMTP_URL"] == ref(
        "creditsync-secrets", "alertSmtpUrl", optional=True)
    assert env_of(api)["CREDITSYNC_WIX_PUBLIC_KEY"] == ref("wix-app", "public.pem")
    assert env_of(api)["CREDITSYNC_ADMIN_TOKEN"] == ref("creditsync-secrets", "adminToken")
    [migrate] = find(out, "Job")["spec"]["template"]["spec"]["containers"]
    assert env_of(migrate)["CREDITSYNC_DATABASE_URL"] == ref("creditsync-secrets", "databaseUrl")


def test_the_ingress_exposes_the_webhook_the_instance_endpoints_and_the_pages() -> None:
    out = render.render(render.VALUES["ingress"])
    ingress = find(out, "Ingress")["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert ingress["tls"] == [{"hosts": ["credits.example.com"],
                               "secretName": "credits-example-com-tls"}]
    [rule] = ingress["rules"]
    assert rule["host"] == "credits.example.com"
    paths = {(p["path"], p["pathType"]) for p in rule["http"]["paths"]}
    assert ("/api/webhooks/billing", "Exact") in paths
    assert {("/billing", "Exact"), ("/admin", "Exact"), ("/static", "Prefix")} <= paths
    assert {p["backend"]["service"]["name"] for p in rule["http"]["paths"]} == {"creditsync"}
    policy_ = find(out, "NetworkPolicy")["spec"]
    assert policy_["policyTypes"] == ["Ingress"]
    assert policy_["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert len(policy_["ingress"][0]["from"]) == 2
    env = env_of(containers(out)["operator"])
    assert env["CREDITSYNC_ALERT_WEBHOOK_URL"] == {
        "secretKeyRef": {"name": "creditsync", "key": "alertWebhookUrl"}}
    assert "CREDITSYNC_ALERT_SMTP_URL" not in env  # not set anywhere: no variable


def _paths_cover(paths: list[dict[str, str]], route: str) -> bool:
    return any(route == p["path"] or (p["pathType"] == "Prefix"
                                      and route.startswith(p["path"].rstrip("/") + "/"))
               for p in paths)


def _public_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _route_paths(routes: list[Any]) -> Iterator[str]:
    """Every route's path (newer FastAPI keeps an included router behind a wrapper)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _route_paths(included.routes)
        elif getattr(route, "path", None):
            yield str(route.path)


def test_the_default_ingress_paths_cover_every_public_route_of_the_api() -> None:
    """Every route the API serves is exposed, except health, metrics and the docs."""
    settings = config.Settings(wix_public_key=_public_key_pem(), app_secret="s",
                               admin_token="chart-test-admin-token")
    routes = set(_route_paths(api_main.create_app(settings).routes))
    paths = yaml.safe_load((render.CHART / "values.yaml").read_text())["ingress"]["paths"]
    public = routes - INTERNAL_ROUTES
    assert "/api/webhooks/billing" in public
    hidden = sorted(r for r in public if not _paths_cover(paths, r))
    assert not hidden, (f"the default Ingress does not expose {hidden}: add them to "
                        "ingress.paths in charts/creditsync/values.yaml, or to INTERNAL_ROUTES "
                        "here if they must stay inside the cluster")
    assert sorted(r for r in routes & INTERNAL_ROUTES if _paths_cover(paths, r)) == []


def test_two_replicas_keep_one_up_during_disruptions() -> None:
    out = render.render(render.VALUES["two-replicas"])
    assert find(out, "Deployment")["spec"]["replicas"] == 2
    assert find(out, "PodDisruptionBudget")["spec"] == {
        "minAvailable": 1, "selector": {"matchLabels": {
            "app.kubernetes.io/name": "creditsync", "app.kubernetes.io/instance": "creditsync",
            "app.kubernetes.io/component": "server"}}}
    spec = find(out, "Deployment")["spec"]["template"]["spec"]
    assert "podAntiAffinity" in spec["affinity"]


def test_all_namespaces_gets_a_cluster_role_with_the_same_rules() -> None:
    out = render.render(render.VALUES["all-namespaces"])
    assert not [m for m in out if m["kind"] in ("Role", "RoleBinding", "ServiceAccount", "Job")]
    role = find(out, "ClusterRole")
    namespaced = find(render.render(DEFAULTS), "Role")
    assert json.dumps(role["rules"]).replace("clusterkopfpeerings", "kopfpeerings") == (
        json.dumps(namespaced["rules"]))
    binding = find(out, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "billing-operator", "namespace": "creditsync"}]
    assert binding["roleRef"]["kind"] == "ClusterRole"
    spec = find(out, "Deployment")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "billing-operator"
    assert "--all-namespaces" in spec["containers"][0]["args"]
    pro = find(out, "CreditPlan", "pro")["spec"]
    assert pro["aliases"] == ["pro-monthly", "pro-yearly"]
    assert pro["rollover"] == {"maxCredits": 1000, "expiresAfter": "30d"}
    assert "rollover" not in find(out, "CreditPlan", "free")["spec"]
    assert find(out, "CreditSync")["spec"]["usageOnPlanChange"] == "Preserve"
    assert env_of(containers(out)["api"])["CREDITSYNC_USAGE_ON_PLAN_CHANGE"] == "Preserve"


def test_the_role_is_only_our_resources_status_events_and_peering() -> None:
    role = find(render.render(DEFAULTS), "Role")
    assert role["rules"] == [
        {"apiGroups": ["creditsync.io"], "resources": ["creditplans", "creditsyncs"],
         "verbs": ["list", "watch", "patch"]},
        {"apiGroups": ["creditsync.io"],
         "resources": ["creditplans/status", "creditsyncs/status"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"],
         "verbs": ["list", "watch", "create"]},
        {"apiGroups": ["kopf.dev"], "resources": ["kopfpeerings"],
         "resourceNames": ["creditsync"], "verbs": ["patch"]}]
    assert not [m for m in render.render(DEFAULTS, sets=["rbac.create=false"])
                if m["kind"] in ("Role", "RoleBinding")]


@pytest.mark.parametrize("name", sorted(render.VALUES))
def test_every_pod_is_hardened(name: str) -> None:
    for where, spec in pods(render.render(render.VALUES[name])):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in spec["containers"]:
            ctx = c["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert ctx["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert ctx["capabilities"] == {"drop": ["ALL"]}, (where, c["name"])
            assert ctx["runAsNonRoot"] is True, (where, c["name"])
            assert ctx["runAsUser"] == 10001, (where, c["name"])
            assert c["resources"]["requests"], where
            assert c["resources"]["limits"]["memory"], where


@pytest.mark.parametrize("name", sorted(render.VALUES))
def test_only_the_operator_container_holds_a_kubernetes_token(name: str) -> None:
    """The API sidecar faces the internet: no pod gets the ServiceAccount's token mounted
    into every container; the operator container alone mounts a projected one."""
    out = render.render(render.VALUES[name])
    for account in (m for m in out if m["kind"] == "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False
    mounted = {}
    for where, spec in pods(out):
        assert spec["automountServiceAccountToken"] is False, where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert not [v for v in volumes.values() if "secret" in v], where  # no token Secret
        for c in spec["containers"]:
            for mount in c.get("volumeMounts", []):
                if "projected" in volumes[mount["name"]] or mount["mountPath"].startswith(
                        "/var/run/secrets/"):
                    mounted[(where, c["name"])] = mount
    deployment = find(out, "Deployment")
    where = f"Deployment/{deployment['metadata']['name']}"
    assert mounted == {(where, "operator"): {
        "name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    # what automountServiceAccountToken would have given every container
    assert volumes["kube-api-access"] == {"name": "kube-api-access", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "kube-root-ca.crt",
                       "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
            "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}


@pytest.mark.parametrize("name", sorted(render.VALUES))
def test_pod_templates_carry_the_selector_labels_only(name: str) -> None:
    out = render.render(render.VALUES[name])
    selector = {"app.kubernetes.io/name": "creditsync", "app.kubernetes.io/instance": "creditsync"}
    deployment = find(out, "Deployment")
    assert deployment["spec"]["template"]["metadata"]["labels"] == (
        deployment["spec"]["selector"]["matchLabels"]) == {
        **selector, "app.kubernetes.io/component": "server"}
    # the objects themselves keep the full labels
    assert {"helm.sh/chart": "creditsync-0.1.0", "app.kubernetes.io/version": "0.1.0",
            "app.kubernetes.io/managed-by": "Helm"}.items() <= (
        deployment["metadata"]["labels"].items())
    for job in (m for m in out if m["kind"] == "Job"):
        assert job["spec"]["template"]["metadata"]["labels"] == {
            **selector, "app.kubernetes.io/component": "migration"}
        assert "helm.sh/chart" in job["metadata"]["labels"]
    labelled = render.render(render.VALUES[name], sets=["podLabels.team=billing",
                                                        "commonLabels.cost=credits"])
    template = find(labelled, "Deployment")["spec"]["template"]
    assert template["metadata"]["labels"] == {
        **selector, "app.kubernetes.io/component": "server", "team": "billing"}


def test_a_new_chart_version_alone_rolls_no_pod(tmp_path: Path) -> None:
    """Pod templates (labels, the secret checksum) do not change with the chart's version."""
    chart = tmp_path / "creditsync"
    shutil.copytree(render.CHART, chart)
    meta = chart / "Chart.yaml"
    meta.write_text(meta.read_text().replace("\nversion: 0.1.0\n", "\nversion: 0.1.1\n"))

    def templates(path: Path) -> dict[str, Any]:
        done = render.helm("template", render.RELEASE, str(path), "--namespace",
                           render.NAMESPACE, "-f", str(DEFAULTS))
        assert done.returncode == 0, done.stderr
        docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        assert find(docs, "Deployment")["metadata"]["labels"]["helm.sh/chart"] == (
            f"creditsync-{yaml.safe_load((path / 'Chart.yaml').read_text())['version']}")
        return {f"{m['kind']}/{m['metadata']['name']}": m["spec"]["template"]
                for m in docs if m["kind"] in ("Deployment", "Job")}

    before, after = templates(render.CHART), templates(chart)
    assert sorted(before) == ["Deployment/creditsync", "Job/creditsync-migrate"]
    assert after == before
    # a changed secret value still restarts the pods
    changed = render.render(DEFAULTS, sets=["secrets.adminToken.value=another-token"])
    assert find(changed, "Deployment")["spec"]["template"]["metadata"]["annotations"][
        "checksum/secret"] != before["Deployment/creditsync"]["metadata"]["annotations"][
        "checksum/secret"]


# ---- validation of the rendered manifests -----------------------------------------------


def _crd_schemas() -> dict[str, dict[str, Any]]:
    found = {}
    for path in (render.DEPLOY / "crds").glob("*.yaml"):
        for crd in yaml.safe_load_all(path.read_text()):
            [version] = crd["spec"]["versions"]
            kind = crd["spec"]["names"]["kind"]
            found[f"{crd['spec']['group']}/{version['name']}/{kind}"] = (
                version["schema"]["openAPIV3Schema"])
    return found


@pytest.mark.parametrize("name", sorted(render.VALUES))
def test_rendered_manifests_are_valid_kubernetes_objects(name: str) -> None:
    """kubernetes-validate (strict: unknown fields are errors) for built-in kinds, our CRDs'
    schemas for our kinds; the Prometheus Operator's kinds are checked below."""
    crds = _crd_schemas()
    checked = set()
    for manifest in render.render(render.VALUES[name]):
        key = f"{manifest['apiVersion']}/{manifest['kind']}"
        if key in crds:
            jsonschema.validate(manifest, crds[key])
        elif manifest["kind"] not in PROMETHEUS_KINDS:
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(manifest, version, strict=True)
        checked.add(manifest["kind"])
    assert {"Deployment", "Service", "CreditPlan", "CreditSync", "Pod"} <= checked


def test_validation_catches_a_bad_manifest() -> None:
    """The offline validation is not a no-op: a misspelled field fails it."""
    deployment = find(render.render(DEFAULTS), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    plan = find(render.render(DEFAULTS), "CreditPlan", "pro")
    plan["spec"]["monthlyCredits"] = -1
    with pytest.raises(jsonschema.ValidationError, match="-1 is less than the minimum of 0"):
        jsonschema.validate(plan, _crd_schemas()["creditsync.io/v1alpha1/CreditPlan"])


def test_the_service_monitor_scrapes_the_api_service() -> None:
    out = render.render(render.VALUES["ingress"])
    monitor = find(out, "ServiceMonitor")
    service = find(out, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["creditsync"]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "http", "path": "/metrics", "interval": "30s",
                        "scrapeTimeout": "10s"}
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


# ---- the alerts ------------------------------------------------------------------------


def _rules_file(tmp_path: Path) -> Path:
    rule = find(render.render(render.VALUES["ingress"]), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool not found: apt-get install prometheus (scripts/test installs it)"
    return found


def test_the_alert_rules_pass_promtool_check(tmp_path: Path) -> None:
    done = subprocess.run([_promtool(), "check", "rules", str(_rules_file(tmp_path))],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 4 rules found" in done.stdout


def test_the_alerts_fire_when_and_only_when_they_should(tmp_path: Path) -> None:
    """promtool's rule unit tests (tests/chart/alerts_test.yaml) on synthetic series."""
    _rules_file(tmp_path)
    shutil.copy(HERE / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    done = subprocess.run([_promtool(), "test", "rules", "alerts_test.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_alerts_use_metrics_the_api_exports(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/metrics.db"
    engine = database.create(url)
    schema.upgrade(engine)
    with database.write(engine) as conn:
        catalog.seed(conn, None, clock.utcnow())
    runner.guarded_run(engine, trigger="cli", pol=policy.from_settings(config.Settings()))
    exported: set[str] = set()
    text = generate_latest(api_metrics.Metrics(lambda: engine).registry).decode()
    engine.dispose()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        suffixes = {"histogram": ["_bucket", "_sum", "_count"]}
        if kind == "counter" and not name.endswith("_total"):
            name += "_total"
        exported |= {name + s for s in suffixes.get(kind, [""])}
    assert 'creditsync_inbox_backlog{status="quarantined"}' in text
    assert 'creditsync_inbox_backlog{status="failed"}' in text
    rules = find(render.render(render.VALUES["ingress"]), "PrometheusRule")
    used = set()
    for rule in rules["spec"]["groups"][0]["rules"]:
        used |= set(re.findall(r"\b(creditsync_[a-z_]+)\{", rule["expr"]))
    assert used == {"creditsync_drifted_instances", "creditsync_webhooks_total",
                    "creditsync_inbox_backlog"}
    assert used <= exported, sorted(used - exported)


# ---- refusals --------------------------------------------------------------------------

SCHEMA_ERRORS = [
    (["replicaCount=two"], "- replicaCount: Invalid type. Expected: integer, given: string"),
    (["replicas=2"], "- (root): Additional property replicas is not allowed"),
    (["creditSync.usageOnPlanChange=Keep"],
     '- creditSync.usageOnPlanChange: creditSync.usageOnPlanChange must be one of the '
     'following: "Reset", "Preserve"'),
    (["creditSync.interval=5 minutes"], "- creditSync.interval: Does not match pattern"),
    (["creditSync.batchSize=0"], "- creditSync.batchSize: Must be greater than or equal to 1"),
    (["api.port=70000"], "- api.port: Must be less than or equal to 65535"),
    (["service.type=Ingress"], "- service.type: service.type must be one of the following"),
    (["secrets.databaseUrl.value=mysql://db/creditsync"],
     "- secrets.databaseUrl.value: Does not match pattern"),
    (["logLevel=verbose"], "- logLevel: logLevel must be one of the following"),
    (["operator.watchAllNamespaces=yes"],
     "- operator.watchAllNamespaces: Invalid type. Expected: boolean, given: string"),
    (["marketplace.auditInterval=6 hours"],
     "- marketplace.auditInterval: Does not match pattern"),
    (["marketplace.rate=0"], "- marketplace.rate: Must be greater than 0"),
    (["marketplace.apiUrl=www.wixapis.com"], "- marketplace.apiUrl: Does not match pattern"),
    (["marketplace.appid=x"], "- marketplace: Additional property appid is not allowed"),
]


@pytest.mark.parametrize(("sets", "message"), SCHEMA_ERRORS)
def test_the_schema_rejects_wrong_values(sets: list[str], message: str) -> None:
    done = render.template(DEFAULTS, sets=sets)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema(s)" in done.stderr
    assert message in done.stderr, done.stderr


def test_the_schema_rejects_a_bad_plan(tmp_path: Path) -> None:
    bad = tmp_path / "plans.yaml"
    bad.write_text(yaml.safe_dump({"plans": [
        {"id": "Free Plan", "monthlyCredits": -100, "default": True, "colour": "red"}]}))
    done = render.template(DEFAULTS, bad)
    assert done.returncode != 0
    for message in ("- plans.0.id: Does not match pattern",
                    "- plans.0.monthlyCredits: Must be greater than or equal to 0",
                    "- plans.0: Additional property colour is not allowed"):
        assert message in done.stderr, done.stderr


TEMPLATE_ERRORS = [
    ({"appWebhooks": {"url": "https://app.example.com/hooks"}},
     "appWebhooks.url is set: set secrets.appWebhookSecret.value (whsec_...), or name a Secret "
     'holding key "appWebhookSecret" in secrets.appWebhookSecret.existingSecret or '
     "secrets.existingSecret"),
    ({}, "secrets.databaseUrl: set secrets.databaseUrl.value, or name a Secret holding key "
         '"databaseUrl" in secrets.databaseUrl.existingSecret or secrets.existingSecret'),
    ({"plans": [{"id": "free", "monthlyCredits": 100, "default": True},
                {"id": "pro", "monthlyCredits": 5000, "default": True}]},
     "plans: exactly one plan needs default: true (found 2: free, pro)"),
    ({"plans": [{"id": "free", "monthlyCredits": 100}]},
     "plans: exactly one plan needs default: true (found 0: )"),
    ({"plans": [{"id": "free", "monthlyCredits": 100, "default": True},
                {"id": "free", "monthlyCredits": 5000}]},
     'plans: plan id "free" is listed twice'),
    ({"plans": [{"id": "free", "monthlyCredits": 100, "default": True},
                {"id": "pro", "monthlyCredits": 5000, "aliases": ["free"]}]},
     'plans: alias "free" of plan "pro" is already a plan id or another alias'),
    ({"ingress": {"enabled": True}},
     "ingress.host: set the host name the marketplace and browsers reach"),
    ({"serviceAccount": {"create": False}},
     "serviceAccount.name: name the existing ServiceAccount to run as"),
]


def test_the_operator_delivers_events_to_the_app_with_the_signing_secret() -> None:
    out = render.render(DEFAULTS, sets=[
        "appWebhooks.url=https://app.example.com/hooks",
        "secrets.appWebhookSecret.value=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "creditSync.lowCreditThresholds=50%\\,10%"])
    operator, api = find(out, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = env_of(operator)
    assert env["CREDITSYNC_APP_WEBHOOK_URL"] == "https://app.example.com/hooks"
    assert env["CREDITSYNC_APP_WEBHOOK_SECRET"] == {
        "secretKeyRef": {"name": "creditsync", "key": "appWebhookSecret"}}
    assert env["CREDITSYNC_LOW_CREDIT_THRESHOLDS"] == "50%,10%"
    assert "CREDITSYNC_APP_WEBHOOK_SECRET" not in env_of(api)  # the API only writes events
    assert find(out, "CreditSync")["spec"]["lowCreditThresholds"] == "50%,10%"
    assert "appWebhookSecret" in find(out, "Secret", "creditsync")["data"]


@pytest.mark.parametrize(("values", "message"), TEMPLATE_ERRORS)
def test_the_templates_refuse_what_the_schema_cannot_say(
        tmp_path: Path, values: dict[str, Any], message: str) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    files = [path] if not values else [DEFAULTS, path]
    done = render.template(*files)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


# ---- documentation ---------------------------------------------------------------------


def test_every_value_is_documented() -> None:
    text = (render.CHART / "values.yaml").read_text()
    assert valuesdoc.undocumented(text) == []
    docs = {d.path for d in valuesdoc.documented(text)}
    values = yaml.safe_load(text)
    for path in docs:  # no comment documents a key that is gone
        valuesdoc.lookup(values, path)
    assert {"replicaCount", "secrets.databaseUrl.existingSecret", "plans",
            "prometheusRule.alerts.drift"} <= docs


def test_the_readme_values_table_is_current() -> None:
    readme = valuesdoc.README.read_text()
    expected = valuesdoc.readme_with_table(readme, valuesdoc.VALUES.read_text())
    assert readme == expected, ("charts/creditsync/README.md's values table is stale: run "
                                f"{sys.executable} -m tests.chart.valuesdoc --write")


def test_every_value_is_in_the_schema() -> None:
    schema_ = json.loads((render.CHART / "values.schema.json").read_text())
    values = yaml.safe_load((render.CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema_)

    def described(node: dict[str, Any], value: Any, path: str) -> Iterator[str]:
        if "description" not in node:
            yield path
        for key, child in node.get("properties", {}).items():
            if isinstance(value, dict) and key in value:
                yield from described(child, value[key], f"{path}.{key}")

    assert list(described(schema_, values, "values")) == []


# ---- deploy/ ---------------------------------------------------------------------------


def test_the_kustomization_builds_the_canonical_manifests() -> None:
    done = subprocess.run([str(find_tools() / "kubectl"), "kustomize", str(render.DEPLOY)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    built = [m for m in yaml.safe_load_all(done.stdout) if m]
    files = ["namespace.yaml", *sorted(f"crds/{p.name}" for p in (render.DEPLOY / "crds")
                                       .glob("*.yaml")), "rbac.yaml",
             *sorted(f"examples/{p.name}" for p in (render.DEPLOY / "examples").glob("*.yaml"))]
    kustomization = yaml.safe_load((render.DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(files)
    expected = [m for f in files for m in yaml.safe_load_all((render.DEPLOY / f).read_text())]
    assert sorted((m["kind"], m["metadata"]["name"]) for m in built) == sorted(
        (m["kind"], m["metadata"]["name"]) for m in expected)
    for m in built:
        if m["kind"] in ("CreditPlan", "CreditSync", "ServiceAccount"):
            assert m["metadata"]["namespace"] == "creditsync"


def test_the_dockerfile_is_minimal_multi_stage_and_non_root() -> None:
    dockerfile = (render.DEPLOY / "Dockerfile").read_text()
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), str(render.DEPLOY / "Dockerfile")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    assert len(stages) == 2
    final = stages[-1]
    # the chart's securityContext runs it as this user
    assert re.search(r"^USER 10001:10001$", final, re.M)
    assert re.search(r'^ENTRYPOINT \["creditsync"\]$', final, re.M)
    assert "COPY --from=build /opt/creditsync /opt/creditsync" in final
    assert not re.search(r"apt-get|gcc|build-essential|pip install|COPY (core|api|operator)",
                         final)
    for source in re.findall(r"^COPY (?!--)(.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (render.ROOT / path).exists(), f"COPY {path}: not in the repository"
    ignore = (render.ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:ignore.index("*") + 7] == [
        "!pyproject.toml", "!README.md", "!core/", "!api/", "!operator/", "**/__pycache__"]
