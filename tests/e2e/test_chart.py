"""The Helm chart installed for real: a kube-apiserver enforcing RBAC, real PostgreSQL,
`helm install/test/upgrade/uninstall`, and the pod's containers run as local processes.

There is no kubelet or Job controller (tests/support/kubelet.py), so the test does their
part: it runs the migration hook Job's container and marks the Job complete while Helm
waits for it, runs the Deployment's `operator` and `api` containers with exactly the
environment and volumes the pod spec gives them, and runs the `helm test` pod. Only the
operator container mounts a service-account token (a bound token for
`system:serviceaccount:creditsync:creditsync` from the TokenRequest API, as the kubelet
gets it); the API sidecar has none. The API server writes an audit log of the
ServiceAccount's requests: the Role must grant exactly what the operator uses.

One cluster, database and release serve the module; the tests run in order.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.engine import Engine

from creditsync import clock, drift, seed
from creditsync.storage import database, models, schema
from tests.chart import render
from tests.support import database as database_helpers
from tests.support import kubelet
from tests.support.kubecluster import KubeCluster, helm, kubectl
from tests.support.postgres import PostgresCluster, free_port
from tests.support.sinks import HttpSink
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

NS = render.NAMESPACE
ALL_NS = "creditsync-all"  # a second release, serving every namespace
RELEASE = render.RELEASE
FULLNAME = "creditsync"  # the release name contains the chart's name
ACCOUNT = "creditsync"  # the chart's ServiceAccount (its full name)
USER = f"system:serviceaccount:{NS}:{ACCOUNT}"
ALL_USER = f"system:serviceaccount:{ALL_NS}:{ACCOUNT}"
INSTANCES, DRIFTED_PCT = 200, 20  # seed: 120 free, 40 starter, 20 pro, 20 scale; 40 drifted
MIGRATE_JOB = f"{FULLNAME}-migrate"
TEST_POD = f"{FULLNAME}-test-readyz"
AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: ["{USER}", "{ALL_USER}"]
  - level: None
"""
T = TypeVar("T")


def table(text: str) -> list[list[str]]:
    """`kubectl get` output as rows of cells (split on runs of 2+ spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


def condition(obj: dict[str, Any], kind: str) -> tuple[str, str]:
    for found in obj.get("status", {}).get("conditions", []):
        if found["type"] == kind:
            return found["status"], found["reason"]
    return "", ""


@dataclass
class Release:
    namespace: str
    cluster: KubeCluster
    engine: Engine
    work: Path
    audit_log: Path
    values: Path
    api_port: int
    liveness_port: int
    alerts: HttpSink
    install: subprocess.CompletedProcess[str] | None = None
    containers: dict[str, kubelet.ContainerRun] = field(default_factory=dict)

    # ---- Kubernetes -------------------------------------------------------------------

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{ACCOUNT}"

    @property
    def operator_kubeconfig(self) -> Path:
        return self.cluster.kubeconfig(f"sa-{self.namespace}-{ACCOUNT}")

    def kubectl(self, *args: str, check: bool = True, as_operator: bool = False) -> str:
        config = self.operator_kubeconfig if as_operator else None
        done = kubectl(self.cluster, "-n", self.namespace, *args, kubeconfig=config)
        if check:
            assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    def get(self, *args: str) -> dict[str, Any]:
        return kubelet.get_json(self.cluster, "-n", self.namespace, *args)

    def exists(self, *args: str) -> bool:
        return kubectl(self.cluster, "-n", self.namespace, "get", *args).returncode == 0

    def lookup(self, *args: str) -> dict[str, Any] | None:
        """The object, or None when there is none (in one request: no race)."""
        done = kubectl(self.cluster, "-n", self.namespace, "get", *args, "-o", "json",
                       "--ignore-not-found")
        assert done.returncode == 0, done.stderr
        found: dict[str, Any] | None = json.loads(done.stdout) if done.stdout.strip() else None
        return found

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run helm install/upgrade, acting as the Job controller for the migration hook."""
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(helm, self.cluster, *args, "--namespace", self.namespace,
                                 "--timeout=2m")
            job = wait_for("the migration hook Job", lambda: future.done() or self.lookup(
                "job", MIGRATE_JOB), timeout=60)
            assert isinstance(job, dict), future.result().stderr
            self.run_job(job)
            done = future.result()
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def run_job(self, job: dict[str, Any]) -> None:
        pod = job["spec"]["template"]["spec"]
        migrate = kubelet.ContainerRun(self.cluster, self.namespace, pod, "migrate",
                                       self.work / "job")
        code = migrate.run()
        assert code == 0, migrate.tail()
        self.containers["migrate"] = migrate
        kubelet.complete_job(self.cluster, self.namespace, job["metadata"]["name"],
                             succeeded=True)

    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.get("deployment", FULLNAME)["spec"]["template"]["spec"]
        return spec

    def start(self, name: str) -> kubelet.ContainerRun:
        """Start container `name` of the Deployment's pod, with the Kubernetes credentials
        its volumes give it (the operator's projected token; none for the API)."""
        pod = self.pod_spec()
        assert pod["serviceAccountName"] == ACCOUNT
        run = kubelet.ContainerRun(
            self.cluster, self.namespace, pod, name, self.work / name,
            localize={"0.0.0.0": "127.0.0.1"})  # the pod's listen address, on loopback here
        self.containers[name] = run.start()
        return run

    def stop(self, name: str) -> None:
        run = self.containers.pop(name, None)
        if run is not None:
            run.stop()

    def logs(self) -> str:
        return "\n".join(run.tail() for run in self.containers.values())

    def audit(self) -> list[dict[str, Any]]:
        """The API server's audit events of the operator's ServiceAccount (not kubectl's)."""
        text = self.audit_log.read_text() if self.audit_log.exists() else ""
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [e for e in events if e["user"]["username"] == self.user and "objectRef" in e
                and not e.get("userAgent", "").startswith("kubectl/")]

    def requests(self) -> tuple[set[tuple[str, str, str]], set[tuple[str, str, str]]]:
        """(group, resource[/subresource], verb) the operator was allowed, and was denied."""
        allowed: set[tuple[str, str, str]] = set()
        denied: set[tuple[str, str, str]] = set()
        for event in self.audit():
            ref = event["objectRef"]
            resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource")
                                          else "")
            key = (ref.get("apiGroup", ""), resource, event["verb"])
            decision = event["annotations"]["authorization.k8s.io/decision"]
            (allowed if decision == "allow" else denied).add(key)
        return allowed, denied

    def stop_pod_and_audit(self, granted: set[tuple[str, str, str]]) -> tuple[
            set[tuple[str, str, str]], set[tuple[str, str, str]]]:
        """Stop the pod's containers (as on a rollout or uninstall): its watches end, and
        the API server logs them then. Returns `requests()` once all of `granted` shows."""
        self.stop("api")
        self.stop("operator")
        deadline = time.monotonic() + 15
        allowed, denied = self.requests()
        while not allowed >= granted and time.monotonic() < deadline:
            time.sleep(0.5)
            allowed, denied = self.requests()
        return allowed, denied

    # ---- the database -------------------------------------------------------------------

    def credits(self, plan: str) -> set[tuple[str, int]]:
        inst = models.INSTANCES
        with database.read(self.engine) as conn:
            rows = conn.execute(sa.select(inst.c.plan_id, inst.c.credits_total)
                                .where(inst.c.plan_id == plan).distinct())
            return {(str(p), int(c)) for p, c in rows}

    def counts(self) -> dict[str, int]:
        with database.read(self.engine) as conn:
            return {table.name: int(conn.execute(sa.select(sa.func.count()).select_from(table))
                                    .scalar_one())
                    for table in (models.INSTANCES, models.LEDGER, models.PLANS)}


def _jwt_claims(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified (the API server verified them when it accepted it)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def _public_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit")


@pytest.fixture(scope="module")
def cluster(audit_dir: Path) -> Iterator[KubeCluster]:
    """The API server, auditing the chart's ServiceAccounts, with a token for each."""
    (audit_dir / "policy.yaml").write_text(AUDIT_POLICY)
    kube = KubeCluster(extra_apiserver_args=[
        f"--audit-policy-file={audit_dir / 'policy.yaml'}",
        f"--audit-log-path={audit_dir / 'audit.log'}"])
    kube.add_service_account(NS, ACCOUNT)
    kube.add_service_account(ALL_NS, ACCOUNT)
    with kube:
        yield kube


@contextlib.contextmanager
def installed(cluster: KubeCluster, pg: PostgresCluster, work: Path, audit_log: Path,
              namespace: str, *, all_namespaces: bool = False) -> Iterator[Release]:
    """`helm install` into `namespace` on an empty database of its own; uninstalled or
    not, its containers are stopped and its database dropped afterwards."""
    database_name = "e2e_chart_" + namespace.replace("-", "_")
    url = pg.url(database_helpers.new_pg_database(pg, database_name, template=None))
    engine = database.create(url)
    api_port, liveness_port = free_port(), free_port()
    with HttpSink() as alerts:
        path = work / f"{namespace}.yaml"
        path.write_text(yaml.safe_dump({
            "secrets": {
                "databaseUrl": {"value": url},
                "wixPublicKey": {"value": _public_key_pem()},
                "appSecret": {"value": "e2e-app-secret"},
                "adminToken": {"value": "e2e-chart-admin-token"},
                "alertWebhookUrl": {"value": alerts.url},
            },
            "api": {"port": api_port},
            "operator": {"livenessPort": liveness_port, "watchAllNamespaces": all_namespaces},
            # an hour: runs in these tests come from start-up and plan changes
            "creditSync": {"interval": "1h"},
        }))
        # what the namespace controller would add: the `default` ServiceAccount that pods
        # without one (the migration Job's, the test pod) run as
        kubectl(cluster, "create", "namespace", namespace, check=True)
        kubectl(cluster, "-n", namespace, "create", "serviceaccount", "default", check=True)
        # and what the controller-manager's root CA publisher would: the CA that projected
        # token volumes carry as ca.crt
        kubectl(cluster, "-n", namespace, "create", "configmap", "kube-root-ca.crt",
                f"--from-file=ca.crt={cluster.ca_path}", check=True)
        rel = Release(namespace, cluster, engine, work / namespace, audit_log, path,
                      api_port, liveness_port, alerts)
        try:
            rel.install = rel.helm("install", RELEASE, str(render.CHART), "-f", str(path))
            yield rel
        finally:
            for name in list(rel.containers):
                rel.stop(name)
            engine.dispose()
            database_helpers.drop_pg_database(pg, database_name)


@pytest.fixture(scope="module")
def release(cluster: KubeCluster, audit_dir: Path, pg: PostgresCluster,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    with installed(cluster, pg, tmp_path_factory.mktemp("chart"), audit_dir / "audit.log",
                   NS) as rel:
        yield rel


def test_install_ran_the_migration_hook_and_cleaned_up(release: Release) -> None:
    migrate = release.containers["migrate"]
    assert migrate.argv[1:] == ["--log-level=INFO", "--log-json", "db", "upgrade"]
    assert set(migrate.env) - {"PATH", "HOME", "LANG"} == {
        "CREDITSYNC_DATABASE_URL", "CREDITSYNC_PLANS_FILE"}
    schema.require_current(release.engine)  # the Job's `creditsync db upgrade` did it
    with database.read(release.engine) as conn:
        plans = {r.id: r.monthly_credits for r in conn.execute(
            sa.select(models.PLANS.c.id, models.PLANS.c.monthly_credits))}
    assert plans == {"free": 100, "starter": 1000, "pro": 5000, "scale": 25000}
    # hook-succeeded: the Job and the copies of the database URL and plans it read are gone
    for kind in ("job", "secret", "configmap"):
        assert not release.exists(kind, MIGRATE_JOB)
    status = json.loads(helm(release.cluster, "status", RELEASE, "-n", NS, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    # the API server has policy/v1beta1 only (1.20): the chart picked it
    pdb = release.get("poddisruptionbudgets.v1beta1.policy", FULLNAME)
    assert pdb["spec"]["maxUnavailable"] == 1


def test_install_notes_say_where_to_point_the_webhook_and_what_to_watch(
        release: Release) -> None:
    assert release.install is not None
    notes = release.install.stdout
    assert "Point the marketplace at the billing webhook" in notes
    assert "enable the Ingress" in notes
    assert "/api/webhooks/billing" in notes
    assert f"kubectl -n {NS} get creditsyncs -w" in notes
    assert f"helm test {RELEASE} -n {NS}" in notes


def test_the_operator_converges_as_the_chart_service_account(release: Release) -> None:
    now = clock.utcnow()
    drifted = seed.seed(release.engine, INSTANCES, DRIFTED_PCT, now=now)
    assert len(list(drift.scan(release.engine))) == drifted == 40
    operator = release.start("operator")
    assert operator.argv[1:] == ["--log-level=INFO", "--log-json", "operator",
                                 f"--namespace={NS}",
                                 f"--liveness=http://127.0.0.1:{release.liveness_port}/healthz"]
    # least privilege for secrets: the operator container never sees the API's secrets
    assert set(operator.env) - {"PATH", "HOME", "LANG", "KUBECONFIG"} == {
        "CREDITSYNC_DATABASE_URL", "CREDITSYNC_ALERT_WEBHOOK_URL", "CREDITSYNC_ALERT_THROTTLE",
        "CREDITSYNC_USAGE_ON_PLAN_CHANGE", "CREDITSYNC_EXPIRY_GRACE_PERIOD",
        "CREDITSYNC_LOW_CREDIT_THRESHOLDS", "CREDITSYNC_BATCH_SIZE"}
    # its Kubernetes credentials are the projected volume's: a token bound to the chart's
    # ServiceAccount (not the static one the test's kubectl uses), the cluster's CA
    token_dir = operator.mounts[kubelet.SERVICE_ACCOUNT_DIR]
    assert sorted(p.name for p in token_dir.iterdir()) == ["ca.crt", "namespace", "token"]
    assert (token_dir / "namespace").read_text() == NS
    token = (token_dir / "token").read_text()
    assert token != release.cluster.token(f"sa-{NS}-{ACCOUNT}")
    claims = _jwt_claims(token)
    assert claims["sub"] == USER
    assert 3500 < claims["exp"] - claims["iat"] < 3700  # the volume's expirationSeconds
    kubeconfig = yaml.safe_load(Path(operator.env["KUBECONFIG"]).read_text())
    assert kubeconfig["users"][0]["user"] == {"tokenFile": str(token_dir / "token")}

    def synced() -> dict[str, Any] | None:
        obj = release.get("creditsyncs", "creditsync")
        return obj if condition(obj, "Ready") == ("True", "Synced") else None

    obj = wait_for("the CreditSync Ready/Synced", synced, timeout=60, logs=release.logs)
    assert obj["status"]["instances"] == INSTANCES
    assert obj["status"]["drifted"] == 0
    assert obj["status"]["lastRun"]["repaired"] == drifted
    assert condition(obj, "Converged") == ("True", "InSync")
    assert list(drift.scan(release.engine)) == []
    wait_for("the Repaired event", lambda: "Repaired" in release.kubectl(
        "get", "events", "--field-selector=involvedObject.name=creditsync"), logs=release.logs)
    wait_for("the drift alert at the chart's alert webhook", lambda: [
        t for t in release.alerts.texts() if f"{drifted} instances had drifted" in t],
        logs=release.logs)
    probe = kubelet.container(release.pod_spec(), "operator")["livenessProbe"]["httpGet"]
    port = kubelet.container_port(kubelet.container(release.pod_spec(), "operator"),
                                  probe["port"])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe['path']}", timeout=5) as answer:
        assert answer.status == 200


def test_without_an_app_id_the_marketplace_source_is_off(release: Release) -> None:
    """The chart's CreditSync carries marketplace.auditInterval (the API server keeps the
    field); with marketplace.appId empty the operator audits nothing and says so."""
    obj = release.get("creditsyncs", "creditsync")
    assert obj["spec"]["marketplaceAudit"] == {"interval": "6h"}
    assert "lastAudit" not in obj["status"]
    wait_for("the operator's start-up line", lambda: "marketplace audit off" in
             release.containers["operator"].log(), logs=release.logs)


def test_kubectl_get_shows_the_columns(release: Release) -> None:
    rows = table(release.kubectl("get", "creditsyncs"))
    assert rows[0] == ["NAME", "READY", "INSTANCES", "DRIFTED", "LAST SYNC", "AGE"]
    assert rows[1][:4] == ["creditsync", "True", str(INSTANCES), "0"]
    expected = {"free": ("100", "120"), "starter": ("1000", "40"), "pro": ("5000", "20"),
                "scale": ("25000", "20")}

    def plan_rows() -> dict[str, tuple[str, ...]] | None:
        rows = table(release.kubectl("get", "creditplans"))
        assert rows[0] == ["NAME", "CREDITS", "INSTANCES", "AGE"]
        found = {row[0]: tuple(row[1:3]) for row in rows[1:]}
        return found if found == expected else None

    wait_for("plan instance counts in `kubectl get creditplans`", plan_rows, logs=release.logs)
    both = release.kubectl("get", "creditplans,creditsyncs")
    assert "creditplan.creditsync.io/pro" in both
    assert "creditsync.creditsync.io/creditsync" in both


def _granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_actions_outside_the_role_are_denied(release: Release) -> None:
    operator = release.cluster.kubeconfig(f"sa-{NS}-{ACCOUNT}")

    def can(*args: str) -> str:
        return kubectl(release.cluster, "-n", NS, "auth", "can-i", *args,
                       kubeconfig=operator).stdout.strip()

    assert can("patch", "creditsyncs.creditsync.io", "--subresource=status") == "yes"
    for action in (("get", "secrets"), ("list", "pods"), ("create", "deployments"),
                   ("delete", "creditplans.creditsync.io"),
                   ("create", "creditplans.creditsync.io"),
                   ("update", "roles.rbac.authorization.k8s.io"),
                   ("patch", "kopfpeerings.kopf.dev/someone-else")):
        assert can(*action) == "no", action
    assert can("list", "creditplans.creditsync.io", "-n", "default") == "no"
    assert can("list", "namespaces") == "no"
    # a real call, refused by the API server
    out = release.kubectl("get", "secret", FULLNAME, check=False, as_operator=True)
    assert f'User "{USER}" cannot get resource "secrets"' in out
    out = release.kubectl("delete", "creditplan", "free", check=False, as_operator=True)
    assert "Forbidden" in out
    assert release.exists("creditplan", "free")


def test_the_api_sidecar_answers_its_probes_and_helm_test_passes(release: Release) -> None:
    url = f"http://{FULLNAME}.{NS}.svc:80"
    local = f"http://127.0.0.1:{release.api_port}"

    def helm_test() -> tuple[subprocess.CompletedProcess[str], int]:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(helm, release.cluster, "test", RELEASE, "-n", NS,
                                 "--timeout=1m")
            def new_pod() -> dict[str, Any] | None:
                found = release.lookup("pod", TEST_POD)  # not the last run's, finished
                if found is None or found.get("status", {}).get("phase", "Pending") != "Pending":
                    return None
                return found

            pod = wait_for("the test pod", lambda: future.done() or new_pod())
            assert isinstance(pod, dict), future.result().stderr
            run = kubelet.ContainerRun(release.cluster, NS, pod["spec"], "readyz",
                                       release.work / "test", localize={url: local})
            code = run.run(timeout=30)
            kubelet.finish_pod(release.cluster, NS, TEST_POD, code)
            return future.result(), code

    # no API yet: the test pod's check fails, and so does `helm test`
    done, code = helm_test()
    assert code != 0
    assert done.returncode != 0
    assert "Phase:          Failed" in done.stdout

    api = release.start("api")
    # the sidecar that faces the internet holds no Kubernetes credentials
    assert kubelet.SERVICE_ACCOUNT_DIR not in api.mounts
    assert "KUBECONFIG" not in api.env
    spec = kubelet.container(release.pod_spec(), "api")
    ready = spec["readinessProbe"]["httpGet"]
    port = kubelet.container_port(spec, ready["port"])
    assert port == release.api_port

    def probe(path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as answer:
                return int(answer.status)
        except (urllib.error.URLError, ConnectionError):
            return None

    assert wait_for("the API's readiness probe", lambda: probe(ready["path"]) == 200, timeout=60,
                logs=release.logs)
    assert probe(spec["livenessProbe"]["httpGet"]["path"]) == 200
    assert api.running()
    done, code = helm_test()
    assert code == 0
    assert "Phase:          Succeeded" in done.stdout
    assert not release.exists("pod", TEST_POD)  # hook-succeeded


def test_upgrade_changing_a_plan_converges_instances(release: Release) -> None:
    values = yaml.safe_load(render.CHART.joinpath("values.yaml").read_text())
    plans = values["plans"]
    for plan in plans:
        if plan["id"] == "pro":
            plan["monthlyCredits"] = 6000
    changed = release.work / "pro-6000.yaml"
    changed.write_text(yaml.safe_dump({"plans": plans}))
    before = release.counts()
    started = time.monotonic()
    release.helm("upgrade", RELEASE, str(render.CHART), "-f", str(release.values),
                 "-f", str(changed))
    assert release.get("creditplan", "pro")["spec"]["monthlyCredits"] == 6000
    wait_for("every pro instance at 6,000", lambda: release.credits("pro") == {("pro", 6000)},
         logs=release.logs)
    assert time.monotonic() - started < 60
    ledger = models.LEDGER
    with database.read(release.engine) as conn:
        rows = conn.execute(sa.select(ledger.c.kind, ledger.c.credits_total_before,
                                      ledger.c.credits_total_after, sa.func.count())
                            .where(ledger.c.credits_total_after == 6000)
                            .group_by(ledger.c.kind, ledger.c.credits_total_before,
                                      ledger.c.credits_total_after)).all()
    assert [tuple(r) for r in rows] == [("drift_repair", 5000, 6000, 20)]
    assert release.counts()["ledger"] == before["ledger"] + 20
    assert release.credits("starter") == {("starter", 1000)}
    status = json.loads(helm(release.cluster, "status", RELEASE, "-n", NS, "-o", "json").stdout)
    assert status["version"] == 2


def test_the_operator_used_exactly_its_role_and_was_never_denied(release: Release) -> None:
    """Over the release's life (install, convergence, upgrade), per the audit log."""
    granted = _granted(release.get("role", FULLNAME))
    assert release.get("rolebinding", FULLNAME)["subjects"] == [
        {"kind": "ServiceAccount", "name": ACCOUNT, "namespace": NS}]

    allowed, denied = release.stop_pod_and_audit(granted)
    assert allowed == granted, f"used: {sorted(allowed)}; granted: {sorted(granted)}"
    assert denied == set()  # kopf asks for nothing more (no namespace or CRD watching)
    # the peering patches are the `creditsync` KopfPeering's only
    names = {e["objectRef"].get("name") for e in release.audit()
             if e["objectRef"]["resource"] == "kopfpeerings" and e["verb"] == "patch"}
    assert names == {"creditsync"}


def test_uninstall_leaves_the_crds_and_the_data(release: Release) -> None:
    before = release.counts()
    done = helm(release.cluster, "uninstall", RELEASE, "-n", NS, "--timeout=1m")
    assert done.returncode == 0, done.stderr
    for kind, name in (("deployment", FULLNAME), ("service", FULLNAME), ("secret", FULLNAME),
                       ("serviceaccount", ACCOUNT), ("role", FULLNAME),
                       ("rolebinding", FULLNAME)):
        assert not release.exists(kind, name), (kind, name)
    crds = kubectl(release.cluster, "get", "crd", "-o", "name").stdout.split()
    assert sorted(crds) == [
        "customresourcedefinition.apiextensions.k8s.io/clusterkopfpeerings.kopf.dev",
        "customresourcedefinition.apiextensions.k8s.io/creditplans.creditsync.io",
        "customresourcedefinition.apiextensions.k8s.io/creditsyncs.creditsync.io",
        "customresourcedefinition.apiextensions.k8s.io/kopfpeerings.kopf.dev"]
    # keepCustomResources: the plans stay, so the catalog stays whole
    names = release.kubectl("get", "creditplans,creditsyncs", "-o", "name").split()
    assert sorted(names) == ["creditplan.creditsync.io/free", "creditplan.creditsync.io/pro",
                             "creditplan.creditsync.io/scale",
                             "creditplan.creditsync.io/starter",
                             "creditsync.creditsync.io/creditsync"]
    assert release.counts() == before
    assert release.credits("pro") == {("pro", 6000)}
    schema.require_current(release.engine)


def test_the_api_server_accepts_every_rendering(release: Release) -> None:
    """`kubectl apply --dry-run=server` of each values file's manifests, hooks included,
    rendered as `helm install` would for this API server (its API versions).

    ServiceMonitor and PrometheusRule need the Prometheus Operator's CRDs, which this
    cluster does not have: tests/chart/ checks them (promtool checks the rules).
    """
    namespace = "dry-run"
    kubectl(release.cluster, "create", "namespace", namespace, check=True)
    kubectl(release.cluster, "-n", namespace, "create", "serviceaccount", "default", check=True)
    for name, path in render.VALUES.items():
        done = helm(release.cluster, "template", RELEASE, str(render.CHART), "-n", namespace,
                    "-f", str(path), "--validate", "--set", "serviceMonitor.enabled=false",
                    "--set", "prometheusRule.enabled=false")
        assert done.returncode == 0, f"{name}: {done.stderr}"
        docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        done = kubectl(release.cluster, "apply", "--dry-run=server", "-f", "-",
                       input=yaml.safe_dump_all(docs))
        assert done.returncode == 0, f"{name}: {done.stderr}"
        applied = done.stdout.splitlines()
        assert len(applied) == len(docs), (name, applied)
        assert all(line.endswith("(server dry run)") for line in applied), applied
    # what NOTES.txt says with an Ingress: the webhook URL to give the marketplace
    done = helm(release.cluster, "install", "with-ingress", str(render.CHART), "-n", namespace,
                "-f", str(render.VALUES["ingress"]), "--dry-run=server",
                "--set", "serviceMonitor.enabled=false", "--set", "prometheusRule.enabled=false")
    assert done.returncode == 0, done.stderr
    assert "     https://credits.example.com/api/webhooks/billing\n" in done.stdout
    # deploy/'s kustomization, as `kubectl apply -k deploy/` sends it (the CRDs exist)
    done = kubectl(release.cluster, "apply", "-k", str(render.DEPLOY), "--dry-run=server")
    assert done.returncode == 0, done.stderr
    applied = done.stdout.splitlines()
    assert len(applied) == 13, applied  # the namespace, 4 CRDs, 3 RBAC objects, 5 examples
    assert all(line.endswith("(server dry run)") for line in applied), applied


def test_all_namespaces_mode_runs_with_its_cluster_role(
        release: Release, pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A second release, `operator.watchAllNamespaces`: the operator serves every namespace
    with a ClusterRole and ClusterRoleBinding, and needs nothing more."""
    # the first release's kept resources go: an operator for all namespaces would serve them
    # too (their finalizer is the first operator's, which is gone)
    for kind in ("creditplans", "creditsyncs"):
        for name in release.kubectl("get", kind, "-o", "name").split():
            release.kubectl("patch", name, "--type=merge", "-p",
                            '{"metadata": {"finalizers": null}}')
            release.kubectl("delete", name)
    with installed(release.cluster, pg, tmp_path_factory.mktemp("chart-all"),
                   release.audit_log, ALL_NS, all_namespaces=True) as rel:
        assert not rel.exists("role", FULLNAME)
        granted = _granted(rel.get("clusterrole", FULLNAME))
        assert rel.get("clusterrolebinding", FULLNAME)["subjects"] == [
            {"kind": "ServiceAccount", "name": ACCOUNT, "namespace": ALL_NS}]
        drifted = seed.seed(rel.engine, 50, DRIFTED_PCT, now=clock.utcnow())
        operator = rel.start("operator")
        assert "--all-namespaces" in operator.argv

        def synced() -> dict[str, Any] | None:
            obj = rel.get("creditsyncs", "creditsync")
            return obj if condition(obj, "Ready") == ("True", "Synced") else None

        obj = wait_for("the CreditSync Ready/Synced", synced, timeout=60, logs=rel.logs)
        assert (obj["status"]["instances"], obj["status"]["drifted"]) == (50, 0)
        assert obj["status"]["lastRun"]["repaired"] == drifted == 10
        peering = kubelet.get_json(rel.cluster, "clusterkopfpeerings.kopf.dev", "creditsync")
        assert peering["metadata"]["name"] == "creditsync"
        allowed, denied = rel.stop_pod_and_audit(granted)
        assert allowed == granted, f"used: {sorted(allowed)}; granted: {sorted(granted)}"
        assert denied == set()
        done = helm(rel.cluster, "uninstall", RELEASE, "-n", ALL_NS, "--timeout=1m")
        assert done.returncode == 0, done.stderr
        assert kubectl(rel.cluster, "get", "clusterrole", FULLNAME).returncode != 0
