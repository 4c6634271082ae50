"""The operator end to end: a real kube-apiserver, real PostgreSQL, `creditsync operator`
running as its own process with the least-privileged RBAC of `deploy/rbac.yaml`.

One cluster, database and operator serve the whole module; the tests run in order and
each one leaves the system converged for the next. Everything is polled with timeouts.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import itertools
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import kubernetes
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from creditsync import (
    catalog,
    clock,
    drift,
    inbox,
    locks,
    marketplace_standin,
    plans,
    policy_store,
    seed,
)
from creditsync.storage import database, models
from creditsync_api import devkeys, tokens, wix
from tests.e2e.conftest import (
    CREDITSYNC,
    OPERATOR_NAMESPACE,
    OperatorProcess,
    operator_kubeconfig,
)
from tests.support import database as database_helpers
from tests.support import waiting
from tests.support.kubecluster import KubeCluster, kubectl
from tests.support.postgres import PostgresCluster, free_port
from tests.support.receiver import AppReceiver
from tests.support.sinks import HttpSink, SmtpSink

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NS = OPERATOR_NAMESPACE
GROUP, VERSION = "creditsync.io", "v1alpha1"
INSTANCES, DRIFTED_PCT = 200, 20  # seed: 120 free, 40 starter, 20 pro, 20 scale; 40 drifted
LIVENESS = f"http://127.0.0.1:{free_port()}/healthz"
T = TypeVar("T")


@dataclass
class System:
    cluster: KubeCluster
    engine: Engine
    url: str
    pg: PostgresCluster
    custom: Any  # kubernetes.client.CustomObjectsApi
    core: Any  # kubernetes.client.CoreV1Api
    http: HttpSink
    smtp: SmtpSink
    log_dir: Path
    env: dict[str, str]
    operators: list[OperatorProcess]
    app: AppReceiver

    # ---- waiting --------------------------------------------------------------------

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
        return waiting.wait_for(what, probe, timeout, ignore=(kubernetes.client.ApiException,),
                                logs=lambda: "\n".join(op.tail() for op in self.operators))

    # ---- Kubernetes ---------------------------------------------------------------

    def get(self, plural: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, NS, plural, name)
        return found

    def monthly_credits(self, plan: str) -> int:
        return int(self.get("creditplans", plan)["spec"]["monthlyCredits"])

    def sync(self) -> dict[str, Any]:
        return self.get("creditsyncs", "creditsync")

    def wait_sync(self, what: str, ok: Callable[[dict[str, Any]], object],
                  timeout: float = 30.0) -> dict[str, Any]:
        """The CreditSync once `ok(it)` holds."""
        def probe() -> dict[str, Any] | None:
            found = self.sync()
            return found if ok(found) else None
        return self.wait(what, probe, timeout)

    def patch(self, plural: str, name: str, spec: dict[str, Any]) -> int:
        """Merge-patch the spec; returns the new generation."""
        done = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NS, plural, name, {"spec": spec})
        return int(done["metadata"]["generation"])

    def events(self, name: str, reason: str | None = None) -> list[Any]:
        found = self.core.list_namespaced_event(
            NS, field_selector=f"involvedObject.name={name}").items
        return [e for e in found if reason is None or e.reason == reason]

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        result = kubectl(self.cluster, "-n", NS, *args, input=stdin)
        if check:
            assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    def start_operator(self, name: str, *args: str) -> OperatorProcess:
        op = OperatorProcess(name, self.log_dir, self.env, ("--namespace", NS, *args))
        self.operators.append(op)
        return op

    # ---- the database -------------------------------------------------------------

    def credits(self, plan: str) -> set[tuple[str, int]]:
        """(plan, credits_total) pairs of the instances seeded on `plan`'s slot."""
        inst = models.INSTANCES
        with database.read(self.engine) as conn:
            rows = conn.execute(sa.select(inst.c.plan_id, inst.c.credits_total)
                                .where(inst.c.plan_id == plan).distinct())
            return {(str(p), int(c)) for p, c in rows}

    def drifted(self) -> list[drift.Drift]:
        return list(drift.scan(self.engine))

    def hand_edit(self, instance_ids: list[str], credits_total: int) -> None:
        inst = models.INSTANCES
        with database.write(self.engine) as conn:
            conn.execute(inst.update().where(inst.c.instance_id.in_(instance_ids))
                         .values(credits_total=credits_total))

    def newest_run(self) -> str | None:
        runs = models.SYNC_RUNS
        with database.read(self.engine) as conn:
            return conn.execute(sa.select(runs.c.id).where(runs.c.finished_at.is_not(None))
                                .order_by(runs.c.started_at.desc()).limit(1)).scalar()

    def runs(self, trigger: str | None = None) -> int:
        runs = models.SYNC_RUNS
        query = sa.select(sa.func.count()).select_from(runs)
        if trigger is not None:
            query = query.where(runs.c.trigger == trigger)
        with database.read(self.engine) as conn:
            return int(conn.execute(query).scalar_one())


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for found in obj.get("status", {}).get("conditions", []):
        if found["type"] == kind:
            return dict(found)
    return {}


def status_of(obj: dict[str, Any], kind: str) -> tuple[str, str]:
    found = condition(obj, kind)
    return found.get("status", ""), found.get("reason", "")


def table(text: str) -> list[list[str]]:
    """`kubectl get` output as rows of cells (split on runs of 2+ spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


@contextlib.contextmanager
def holding_the_lock(engine: Engine, timeout: float = 10.0) -> Iterator[None]:
    """Hold the convergence lock, as another runner (`creditsync run`) would."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with locks.convergence_lock(engine) as held:
            if held:
                yield
                return
        time.sleep(0.05)
    raise AssertionError("the operator never let go of the convergence lock")


@pytest.fixture(scope="module")
def system(kube: KubeCluster, pg: PostgresCluster,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    url = pg.url(database_helpers.new_pg_database(pg, "e2e_operator"))
    engine = database.create(url)
    seed.seed(engine, INSTANCES, DRIFTED_PCT, now=clock.utcnow())

    kubectl(kube, "create", "namespace", NS, check=True)
    kubectl(kube, "apply", "-f", str(DEPLOY / "crds"), "-f", str(DEPLOY / "rbac.yaml"),
            check=True)
    kubectl(kube, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s",
            check=True)
    sa_config = operator_kubeconfig(kube)
    waiting.wait_for("the operator's RBAC to take effect", lambda: kubectl(
        kube, "auth", "can-i", "patch", "creditsyncs.creditsync.io", "-n", NS,
        "--subresource=status", kubeconfig=sa_config).stdout.strip() == "yes")
    kubectl(kube, "-n", NS, "apply", "-f", str(DEPLOY / "examples"), check=True)
    # the example runs every minute; hour-long intervals prove that runs come from triggers
    kubectl(kube, "-n", NS, "patch", "creditsyncs", "creditsync", "--type=merge",
            "-p", '{"spec": {"interval": "1h"}}', check=True)

    api = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kube.admin_kubeconfig))
    with HttpSink() as http, SmtpSink() as smtp, AppReceiver() as app, api:
        env = {
            "KUBECONFIG": str(sa_config),
            "CREDITSYNC_DATABASE_URL": url,
            "CREDITSYNC_ALERT_WEBHOOK_URL": http.url,
            "CREDITSYNC_ALERT_SMTP_URL": smtp.url(),
            "CREDITSYNC_ALERT_THROTTLE": "1s",
            "CREDITSYNC_APP_WEBHOOK_URL": app.url,
            "CREDITSYNC_APP_WEBHOOK_SECRET": app.secret,
        }
        system = System(kube, engine, url, pg, kubernetes.client.CustomObjectsApi(api),
                        kubernetes.client.CoreV1Api(api), http, smtp,
                        tmp_path_factory.mktemp("operators"), env, [], app)
        system.start_operator("operator-1", "--liveness", LIVENESS)
        try:
            yield system
        finally:
            for op in system.operators:
                op.stop()
            engine.dispose()
            database_helpers.drop_pg_database(pg, "e2e_operator")


@pytest.fixture(autouse=True)
def creditsync_spec(system: System) -> Iterator[dict[str, Any]]:
    """The CreditSync's spec as the test found it, put back after the test however it ends
    (and observed by the operator), so that any test can run alone or after any other."""
    spec = copy.deepcopy(system.sync()["spec"])
    yield spec
    if system.sync()["spec"] != spec:
        generation = system.patch("creditsyncs", "creditsync", spec)
        system.wait_sync("the restored spec observed", lambda s: s.get("status", {}).get(
            "observedGeneration") == generation)


def test_the_api_server_validates_our_resources(system: System) -> None:
    bad_plan = ("apiVersion: creditsync.io/v1alpha1\nkind: CreditPlan\nmetadata: {name: bad}\n"
                "spec: {monthlyCredits: -5, aliases: [x, x]}\n")
    out = kubectl(system.cluster, "-n", NS, "apply", "-f", "-", input=bad_plan)
    assert out.returncode != 0
    assert "spec.monthlyCredits in body should be greater than or equal to 0" in out.stderr
    assert 'spec.aliases[1]: Duplicate value: "x"' in out.stderr
    bad_sync = ("apiVersion: creditsync.io/v1alpha1\nkind: CreditSync\nmetadata: {name: bad}\n"
                "spec: {interval: 5 minutes, usageOnPlanChange: Keep, batchSize: 0, "
                "lowCreditThresholds: lots}\n")
    out = kubectl(system.cluster, "-n", NS, "apply", "-f", "-", input=bad_sync)
    assert out.returncode != 0
    assert "spec.interval in body should match" in out.stderr
    assert "spec.lowCreditThresholds in body should match" in out.stderr
    assert 'spec.usageOnPlanChange: Unsupported value: "Keep"' in out.stderr
    assert "spec.batchSize in body should be greater than or equal to 1" in out.stderr
    # defaults come from the schema
    spec = system.sync()["spec"]
    assert spec == {"interval": "1h", "fullScanInterval": "1h", "batchSize": 5000,
                    "usageOnPlanChange": "Reset", "expiryGracePeriod": "0s",
                    "lowCreditThresholds": "20%,5%", "suspend": False, "dryRun": False,
                    "marketplaceAudit": {"interval": "6h"}}


def test_kubectl_knows_each_kind_by_every_name_and_both_by_the_category(
        system: System) -> None:
    """Singular, plural, short and qualified names each name one kind; the category
    `creditsync-all` lists both. (While the category was `creditsync`, CreditSync's singular
    name, kubectl expanded it first: `kubectl get creditsync NAME` failed with "you must
    specify only one resource".)"""
    sync, plan = "creditsync.creditsync.io/creditsync", "creditplan.creditsync.io/pro"
    for kind, obj, names in (
            ("creditsync", sync, ("creditsync", "creditsyncs", "csync", "csyncs",
                                  "creditsync.creditsync.io", "creditsyncs.creditsync.io")),
            ("creditplan", plan, ("creditplan", "creditplans", "cplan", "cplans",
                                  "creditplan.creditsync.io"))):
        object_name = obj.rsplit("/", 1)[1]
        for name in names:
            assert system.kubectl("get", name, object_name, "-o", "name").split() == [obj], name
            listed = system.kubectl("get", name, "-o", "name").split()
            assert obj in listed, name
            assert all(found.startswith(f"{kind}.creditsync.io/") for found in listed), name
    # what a user types first, in the default table output
    rows = table(system.kubectl("get", "creditsync", "creditsync"))
    assert rows[0] == ["NAME", "READY", "INSTANCES", "DRIFTED", "LAST SYNC", "AGE"]
    assert [row[0] for row in rows[1:]] == ["creditsync"]
    rows = table(system.kubectl("get", "creditplan", "pro"))
    assert rows[0] == ["NAME", "CREDITS", "INSTANCES", "AGE"]
    assert [row[:2] for row in rows[1:]] == [["pro", "5000"]]
    both = system.kubectl("get", "creditsync-all", "-o", "name").split()
    assert sync in both
    assert plan in both
    assert {found.split("/")[0] for found in both} == {"creditsync.creditsync.io",
                                                        "creditplan.creditsync.io"}


def test_start_up_converges_drift_and_reports_it(system: System) -> None:
    drifted = seed.drifted_count(INSTANCES, DRIFTED_PCT)
    # the status and its conditions land in one patch once the run is over
    obj = system.wait_sync("the start-up run's status", lambda s: s.get("status", {}).get(
        "lastSyncTime") and status_of(s, "Ready") == ("True", "Synced"))
    status = obj["status"]
    assert status["instances"] == INSTANCES
    assert status["drifted"] == 0
    last = status["lastRun"]
    assert (last["trigger"], last["scanned"], last["drifted"], last["repaired"],
            last["failed"], last["planMissing"], last["dryRun"]) == (
        "startup", INSTANCES, drifted, drifted, 0, 0, False)
    assert re.fullmatch(r"\d+\.\d{3}s", last["duration"])
    assert status["webhookBacklog"] == {"pending": 0, "quarantined": 0, "failed": 0}
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status_of(obj, "Ready") == ("True", "Synced")
    assert status_of(obj, "Converged") == ("True", "InSync")
    assert status_of(obj, "Degraded") == ("False", "AsExpected")
    assert condition(obj, "Ready")["observedGeneration"] == obj["metadata"]["generation"]
    assert system.drifted() == []

    [event] = system.wait("the Repaired event",
                          lambda: system.events("creditsync", "Repaired"))
    assert event.type == "Normal"
    assert event.message.startswith(f"startup run repaired {drifted} of {INSTANCES} instances: ")
    assert event.message.endswith(f" and {drifted - 5} more")
    assert event.message.count("seed-") == 5

    rows = table(system.kubectl("get", "creditsyncs"))
    assert rows[0] == ["NAME", "READY", "INSTANCES", "DRIFTED", "LAST SYNC", "AGE"]
    assert rows[1][:4] == ["creditsync", "True", str(INSTANCES), "0"]
    expected = {"free": ("100", "120"), "starter": ("1000", "40"), "pro": ("5000", "20"),
                "scale": ("25000", "20")}

    def plan_rows() -> dict[str, tuple[str, ...]] | None:
        rows = table(system.kubectl("get", "creditplans"))
        assert rows[0] == ["NAME", "CREDITS", "INSTANCES", "AGE"]
        found = {row[0]: tuple(row[1:3]) for row in rows[1:]}
        return found if found == expected else None

    system.wait("plan instance counts in `kubectl get creditplans`", plan_rows)
    pro = system.get("creditplans", "pro")
    assert status_of(pro, "Ready") == ("True", "InCatalog")
    with urllib.request.urlopen(LIVENESS, timeout=5) as probe:
        assert probe.status == 200

    # the drift alert reached both sinks
    text = system.wait("the drift alert by webhook", lambda: [
        t for t in system.http.texts() if f"{drifted} instances had drifted credits" in t])
    assert f"A startup run found {drifted} of {INSTANCES} instances drifted and repaired " \
           f"{drifted}." in text[0]
    mail = system.wait("the drift alert by mail", lambda: [
        m for m in system.smtp.mails
        if m.message["Subject"] == f"[creditsync-operator] {drifted} instances had drifted "
                                   "credits"])
    assert mail[0].recipients == ["ops@example.test", "oncall@example.test"]
    assert "Examples: seed-" in mail[0].message.get_content()


def test_a_credit_change_reaches_every_instance_on_the_plan(system: System) -> None:
    started = time.monotonic()
    system.patch("creditplans", "pro", {"monthlyCredits": 6000})
    system.wait("every pro instance at 6,000", lambda: system.credits("pro") == {("pro", 6000)})
    assert time.monotonic() - started < 15  # promptly: the interval is an hour
    obj = system.wait_sync("the plan_change run's status",
                           lambda s: s["status"]["lastRun"]["trigger"] == "plan_change")
    assert obj["status"]["lastRun"]["repaired"] == 20
    ledger = models.LEDGER
    with database.read(system.engine) as conn:
        rows = conn.execute(sa.select(ledger.c.kind, ledger.c.credits_total_before,
                                      ledger.c.credits_total_after, sa.func.count())
                            .where(ledger.c.plan_after == "pro",
                                   ledger.c.credits_total_after == 6000)
                            .group_by(ledger.c.kind, ledger.c.credits_total_before,
                                      ledger.c.credits_total_after)).all()
    assert [tuple(r) for r in rows] == [("drift_repair", 5000, 6000, 20)]
    assert system.events("pro", "CatalogUpdated")
    rows_out = table(system.kubectl("get", "creditplans", "pro"))
    assert rows_out[1][:3] == ["pro", "6000", "20"]


def test_the_operator_delivers_the_repairs_to_the_app_signed_and_in_order(
    system: System,
) -> None:
    """The start-up run's and the plan change's repairs were written as credits.repaired
    events in their batches' transactions; the operator's `deliver` daemon sends them."""
    out = models.OUTBOX
    with database.read(system.engine) as conn:
        written = conn.execute(sa.select(out.c.id, out.c.instance_id, out.c.type)
                               .order_by(out.c.seq)).all()
    assert len([row for row in written if row.type == "credits.repaired"]) >= 60
    system.wait("every event delivered", lambda: {a.webhook_id for a in system.app.accepted}
                >= {row.id for row in written}, timeout=60)
    assert all(a.verified for a in system.app.attempts)
    sent = [a.webhook_id for a in system.app.accepted]
    for instance in {row.instance_id for row in written}:
        mine = [row.id for row in written if row.instance_id == instance]
        assert [i for i in sent if i in mine] == mine  # in order per instance
    generation = system.patch("creditsyncs", "creditsync", {"lowCreditThresholds": "50%"})
    system.wait("the operator storing the thresholds", lambda: (
        policy_store.current(system.engine).policy.low_credit_thresholds == (5000,)
        and system.sync()["status"]["observedGeneration"] == generation))


def test_a_plans_rollover_reaches_the_catalog(system: System) -> None:
    bad = ("apiVersion: creditsync.io/v1alpha1\nkind: CreditPlan\nmetadata: {name: bad}\n"
           "spec: {monthlyCredits: 5, rollover: {maxCredits: -1, expiresAfter: soon}}\n")
    out = kubectl(system.cluster, "-n", NS, "apply", "-f", "-", input=bad)
    assert out.returncode != 0
    assert "spec.rollover.maxCredits in body should be greater than or equal to 0" in out.stderr
    assert "spec.rollover.expiresAfter in body should match" in out.stderr

    def rule() -> plans.Rollover | None:
        found = {p.id: p for p in catalog.current(system.engine)}
        return found["starter"].rollover if "starter" in found else None

    system.patch("creditplans", "starter", {"rollover": {"maxCredits": 300,
                                                          "expiresAfter": "30d"}})
    assert system.wait("starter's rollover in the catalog", rule) == plans.Rollover(
        300, dt.timedelta(days=30))
    assert system.get("creditplans", "starter")["spec"]["rollover"] == {
        "maxCredits": 300, "expiresAfter": "30d"}  # kept: the schema declares it
    system.patch("creditplans", "starter", {"rollover": None})  # a merge patch removes it
    system.wait("starter without rollover", lambda: rule() is None or None)


def test_an_invalid_plan_is_rejected_with_an_event_and_a_condition(system: System) -> None:
    system.kubectl("apply", "-f", "-", stdin=(
        "apiVersion: creditsync.io/v1alpha1\nkind: CreditPlan\nmetadata: {name: gold}\n"
        "spec: {monthlyCredits: 9000, default: true}\n"))
    gold = system.wait("gold's condition", lambda: condition(
        system.get("creditplans", "gold"), "Ready") and system.get("creditplans", "gold"))
    ready = condition(gold, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidPlan")
    assert ready["message"] == ("plans free, gold are all marked default: keep exactly one "
                                "(the catalog keeps its previous state)")
    [event] = system.wait("the InvalidPlan event", lambda: system.events("gold", "InvalidPlan"))
    assert event.type == "Warning"
    with database.read(system.engine) as conn:
        assert conn.execute(sa.select(models.PLANS.c.id).where(models.PLANS.c.id == "gold")
                            ).first() is None
    system.kubectl("delete", "creditplan", "gold", "--timeout=30s")


def test_deleting_a_plan_in_use_downgrades_nobody(system: System) -> None:
    pro = system.monthly_credits("pro")
    system.kubectl("delete", "creditplan", "scale", "--timeout=30s")
    obj = system.wait_sync("Degraded/PlanMissing", lambda s: status_of(s, "Degraded") == (
        "True", "PlanMissing"))
    assert obj["status"]["missingPlans"] == ["scale"]
    assert obj["status"]["drifted"] == 20
    assert status_of(obj, "Converged") == ("False", "PlanMissing")
    assert "20 instance(s) are on plan(s) scale" in condition(obj, "Degraded")["message"]
    assert system.credits("scale") == {("scale", 25000)}  # nobody downgraded
    assert system.wait("the Degraded event", lambda: system.events("creditsync", "Degraded"))
    system.wait("the degraded alert", lambda: [
        t for t in system.http.texts() if "is degraded: PlanMissing" in t])

    system.kubectl("apply", "-f", str(DEPLOY / "examples" / "creditplans.yaml"))
    system.patch("creditplans", "pro", {"monthlyCredits": pro})  # as it was before
    obj = system.wait_sync("recovery from PlanMissing", lambda s: status_of(s, "Degraded") == (
        "False", "AsExpected"))
    assert obj["status"]["missingPlans"] == []
    assert system.events("creditsync", "Recovered")
    assert system.credits("scale") == {("scale", 25000)}
    system.wait("pro back where it was", lambda: system.credits("pro") == {("pro", pro)})


def test_suspend_holds_convergence_until_resumed(system: System) -> None:
    system.wait("a converged system", lambda: system.drifted() == [])
    generation = system.patch("creditsyncs", "creditsync", {"suspend": True})
    system.wait_sync("Suspended", lambda s: status_of(s, "Ready") == ("True", "Suspended")
                     and s["status"]["observedGeneration"] == generation)
    run_id = system.sync()["status"]["lastRun"]["runId"]
    system.hand_edit(["seed-0000011", "seed-0000012"], 1)
    system.patch("creditplans", "starter", {"monthlyCredits": 1500})
    # a window in which an unsuspended loop would have converged at once
    waiting.holds_for("no convergence while suspended", lambda: system.credits(
        "starter") == {("starter", 1000)} and system.sync()["status"]["lastRun"][
        "runId"] == run_id, seconds=2)
    assert len(system.drifted()) == 40 + 2

    system.patch("creditsyncs", "creditsync", {"suspend": False})
    obj = system.wait_sync("convergence after resuming", lambda s: s["status"]["lastRun"][
        "runId"] != run_id and status_of(s, "Ready") == ("True", "Synced"))
    # a new generation: a full scan, which also repairs the hand edits nobody announced
    assert obj["status"]["lastRun"]["trigger"] == "full_scan"
    assert system.credits("starter") == {("starter", 1500)}
    assert system.drifted() == []


def test_a_new_interval_takes_effect_without_a_restart(system: System) -> None:
    ticks = system.runs("tick")
    system.patch("creditsyncs", "creditsync", {"interval": "1s"})
    system.wait("a tick every second", lambda: system.runs("tick") >= ticks + 4, timeout=20)
    runs = models.SYNC_RUNS
    with database.read(system.engine) as conn:
        starts = conn.execute(sa.select(runs.c.started_at).where(runs.c.trigger == "tick")
                              .order_by(runs.c.started_at.desc()).limit(3)).scalars().all()
    gaps = [(a - b).total_seconds() for a, b in itertools.pairwise(starts)]
    assert all(0.9 <= gap < 2.5 for gap in gaps), gaps

    generation = system.patch("creditsyncs", "creditsync", {"interval": "1h"})
    system.wait("the new generation observed", lambda: system.sync()["status"][
        "observedGeneration"] == generation)
    settled = system.runs("tick")
    waiting.holds_for("no tick at an hourly interval",
                      lambda: system.runs("tick") == settled, seconds=3)


def test_a_tick_converges_a_catalog_change_nobody_announced_to_the_loop(
        system: System) -> None:
    """A catalog written straight to the database (as `creditsync plans apply --no-sync`
    does), with no CreditPlan change and no webhook: the next tick converges its instances."""
    generation = system.patch("creditsyncs", "creditsync", {"interval": "1s"})
    system.wait_sync("the new spec observed (its full scan over)", lambda s: s["status"].get(
        "observedGeneration") == generation)
    scale = catalog.require(system.engine).get("scale")
    assert scale is not None
    try:
        catalog.put(system.engine, dataclasses.replace(scale, monthly_credits=26000),
                    clock.utcnow())
        system.wait("every scale instance at 26,000", lambda: system.credits("scale") == {
            ("scale", 26000)}, timeout=15)
        runs = models.SYNC_RUNS
        with database.read(system.engine) as conn:
            trigger, scope, repaired = conn.execute(
                sa.select(runs.c.trigger, runs.c.scope, runs.c.repaired)
                .where(runs.c.repaired > 0).order_by(runs.c.started_at.desc()).limit(1)).one()
        assert (trigger, scope, repaired) == ("tick", "changed", 20)
    finally:
        catalog.put(system.engine, scale, clock.utcnow())
    system.wait("scale back at 25,000", lambda: system.credits("scale") == {("scale", 25000)},
                timeout=15)
    obj = system.wait_sync("a tick in the status", lambda s: s["status"]["lastRun"][
        "trigger"] == "tick")
    assert obj["status"]["lastRun"]["scope"] == "changed"
    assert "missed" not in obj["status"]["lastRun"]
    assert obj["status"]["instances"] == INSTANCES  # a tick leaves the full scan's count


def test_the_full_scan_on_its_own_interval_repairs_what_ticks_missed(system: System) -> None:
    generation = system.patch("creditsyncs", "creditsync", {"interval": "1s",
                                                            "fullScanInterval": "6s"})
    system.wait_sync("the new spec observed", lambda s: s["status"].get(
        "observedGeneration") == generation)
    ticks = system.runs("tick")
    system.hand_edit(["seed-0000021"], 7)  # behind creditsync's back: no tick is told
    edited = time.monotonic()
    system.wait("a full scan repairing the hand edit", lambda: system.drifted() == [],
                timeout=20)
    assert time.monotonic() - edited > 1.5  # not the next tick: the next full scan
    assert system.runs("tick") >= ticks + 1
    runs = models.SYNC_RUNS
    with database.read(system.engine) as conn:
        found = conn.execute(sa.select(runs.c.started_at, runs.c.scope, runs.c.scanned,
                                       runs.c.missed)
                             .where(runs.c.trigger == "full_scan", runs.c.missed > 0)
                             .order_by(runs.c.started_at.desc()).limit(1)).one()
    assert (found.scope, found.scanned, found.missed) == ("all", INSTANCES, 1)
    system.wait("the missed alert", lambda: [
        t for t in system.http.texts() if "1 instances the ticks missed" in t])
    system.wait("the next full scan missing nothing", lambda: _last_full_missed(system) == 0,
                timeout=20)
    with database.read(system.engine) as conn:
        starts = conn.execute(sa.select(runs.c.started_at).where(runs.c.trigger == "full_scan")
                              .order_by(runs.c.started_at.desc()).limit(2)).scalars().all()
    assert 5.5 <= (starts[0] - starts[1]).total_seconds() < 9, starts
    obj = system.wait_sync("a full scan's count in the status", lambda s: s["status"][
        "lastRun"]["trigger"] == "full_scan")
    assert obj["status"]["lastRun"]["missed"] == 0


def _last_full_missed(system: System) -> int | None:
    runs = models.SYNC_RUNS
    with database.read(system.engine) as conn:
        return conn.execute(sa.select(runs.c.missed).where(
            runs.c.trigger == "full_scan", runs.c.finished_at.is_not(None))
            .order_by(runs.c.started_at.desc()).limit(1)).scalar()


def test_a_dry_run_reports_drift_without_repairing(system: System) -> None:
    system.hand_edit(["seed-0000031", "seed-0000032", "seed-0000033"], 3)
    system.patch("creditsyncs", "creditsync", {"dryRun": True})
    try:
        # lastRun and the conditions land in one patch once the run is over
        obj = system.wait_sync("the dry run's status", lambda s: s["status"]["lastRun"][
            "dryRun"] and status_of(s, "Ready") == ("True", "DryRun"))
        assert obj["status"]["drifted"] == 3
        assert status_of(obj, "Converged") == ("False", "DryRun")
        assert len(system.drifted()) == 3
        [event] = system.wait("the DriftFound event",
                              lambda: system.events("creditsync", "DriftFound"))
        assert event.message.startswith(
            "dry run found 3 of 200 instances drifted, not repaired: ")
    finally:  # later tests need a converging operator, whatever happened here
        system.patch("creditsyncs", "creditsync", {"dryRun": False})
    system.wait("repair once the dry run is off", lambda: system.drifted() == [])
    system.wait("Converged again", lambda: status_of(system.sync(), "Converged") == (
        "True", "InSync"))


def test_due_webhooks_are_retried_and_the_backlog_is_reported(system: System) -> None:
    now = clock.utcnow()
    paid = inbox.store(system.engine, inbox.Incoming(
        "seed-0000001", "PaidPlanPurchased", now, "pro", None, {}), now)
    unknown = inbox.store(system.engine, inbox.Incoming(
        "seed-0000002", "PaidPlanPurchased", now, "enterprise-yearly", None, {}), now)
    assert (paid.status, unknown.status) == ("pending", "pending")  # stored, not applied yet
    events = models.WEBHOOK_EVENTS

    def statuses() -> dict[str, str]:
        with database.read(system.engine) as conn:
            return {r.id: r.status for r in conn.execute(sa.select(events.c.id, events.c.status))}

    system.wait("the operator retrying both", lambda: statuses() == {
        paid.event_id: "applied", unknown.event_id: "quarantined"}, timeout=20)
    # seed-0000001 bought pro
    assert system.credits("pro") == {("pro", system.monthly_credits("pro"))}
    system.patch("creditsyncs", "creditsync", {"interval": "2s"})
    system.wait("the backlog in the status", lambda: system.sync()["status"][
        "webhookBacklog"] == {"pending": 0, "quarantined": 1, "failed": 0})
    [alert] = system.wait("the webhook alert", lambda: [
        t for t in system.http.texts() if "billing webhooks failed or quarantined" in t])
    assert "1 more quarantined" in alert


def test_a_database_outage_degrades_then_recovers_on_its_own(system: System) -> None:
    system.patch("creditsyncs", "creditsync", {"interval": "2s"})
    system.pg.stop()
    try:
        obj = system.wait_sync("Degraded/DatabaseUnavailable", lambda s: status_of(
            s, "Degraded") == ("True", "DatabaseUnavailable"))
        assert status_of(obj, "Ready") == ("False", "DatabaseUnavailable")
        assert "connection" in condition(obj, "Degraded")["message"].lower()
        assert re.search(r"\(retrying in \d+s\)$", condition(obj, "Degraded")["message"])
        rows = table(system.kubectl("get", "creditsyncs"))
        assert rows[1][:2] == ["creditsync", "False"]
        system.wait("the outage alert", lambda: [
            t for t in system.http.texts() if "is degraded: DatabaseUnavailable" in t])
    finally:
        system.pg.start()
    obj = system.wait_sync("recovery after the outage", lambda s: status_of(
        s, "Degraded") == ("False", "AsExpected"), timeout=60)
    assert status_of(obj, "Ready") == ("True", "Synced")
    system.wait("the recovery alert", lambda: [
        t for t in system.http.texts() if "recovered" in t])


def test_the_database_lock_keeps_runners_apart(system: System) -> None:
    """While another runner (here: this test) converges, the operator does not."""
    system.patch("creditsyncs", "creditsync", {"interval": "1s", "fullScanInterval": "1s"})
    with holding_the_lock(system.engine):
        # the status of the run before we took the lock lands: it shows the newest run
        run_id = system.wait("the last run before the lock in the status", lambda: (
            (found := system.sync()["status"]["lastRun"]["runId"]) == system.newest_run()
            and found))
        system.hand_edit(["seed-0000041"], 4)
        waiting.holds_for("no run while another runner holds the lock", lambda: (
            system.sync()["status"]["lastRun"]["runId"] == run_id
            and len(system.drifted()) == 1), seconds=2.5)  # two intervals and a lock retry
    system.wait("the operator's run once the lock is free", lambda: system.drifted() == [])


def test_two_operators_only_one_converges(system: System) -> None:
    first = system.operators[0]
    system.patch("creditsyncs", "creditsync", {"interval": "1s", "fullScanInterval": "1s"})
    second = system.start_operator("operator-2")
    system.wait("the second operator to start", lambda: "operator ready" in second.log())
    peers = system.wait("both operators in the peering object", lambda: (
        p := system.custom.get_namespaced_custom_object(
            "kopf.dev", "v1", NS, "kopfpeerings", "creditsync").get("status", {}))
        and len(p) == 2 and p)
    assert len({peer["priority"] for peer in peers.values()}) == 2
    before = first.log().count("creditsync.convergence: sync ")
    waiting.holds_for("the second operator not converging",
                      lambda: "creditsync.convergence: sync " not in second.log(), seconds=3)
    system.wait("the first operator converging every second", lambda: first.log().count(
        "creditsync.convergence: sync ") >= before + 2, timeout=10)

    assert first.stop() == 0
    system.wait("the second operator to take over", lambda: (
        "creditsync.convergence: sync startup" in second.log()), timeout=30)
    system.hand_edit(["seed-0000051"], 5)
    system.wait("the second operator converging", lambda: system.drifted() == [])
    assert second.running()


def test_every_status_field_is_declared(system: System) -> None:
    """The API server prunes undeclared fields: what we read back is what we wrote."""
    status = system.sync()["status"]
    assert set(status) == {"conditions", "observedGeneration", "instances", "drifted",
                           "lastSyncTime", "missingPlans", "lastRun", "webhookBacklog"}
    assert set(status["lastRun"]) - {"missed"} == {  # missed: a full scan's
        "runId", "trigger", "dryRun", "startedAt", "scanned", "drifted", "repaired", "failed",
        "planMissing", "scope", "duration"}
    last_sync = dt.datetime.fromisoformat(status["lastSyncTime"].replace("Z", "+00:00"))
    assert dt.datetime.now(dt.UTC) - last_sync < dt.timedelta(minutes=10)
    plan = system.get("creditplans", "free")["status"]
    assert set(plan) == {"conditions", "instances", "observedGeneration"}


def test_the_creditsync_policy_governs_the_webhook_path(
    system: System, tmp_path: Path
) -> None:
    """The CreditSync says Preserve; the API process was started without the variable (its
    environment would say Reset); a plan change through its webhook preserves usage."""
    generation = system.patch("creditsyncs", "creditsync", {"usageOnPlanChange": "Preserve"})
    try:
        system.wait("the operator storing the spec's policy", lambda: (
            (found := policy_store.current(system.engine)).policy.usage_on_plan_change
            == "Preserve" and found.source == "CreditSync creditsync/creditsync"
            and system.sync()["status"]["observedGeneration"] == generation))
        keys, _ = devkeys.ensure(tmp_path / "keys")
        env = {k: v for k, v in os.environ.items()
               if k != "CREDITSYNC_USAGE_ON_PLAN_CHANGE"}
        port = free_port()
        with (tmp_path / "api.log").open("wb") as log:
            api = subprocess.Popen(
                [str(CREDITSYNC), "--log-json", "api", "--port", str(port)],
                env={**env, "CREDITSYNC_DATABASE_URL": system.url,
                     "CREDITSYNC_WIX_PUBLIC_KEY": keys.public_pem,
                     "CREDITSYNC_APP_SECRET": keys.app_secret,
                     "CREDITSYNC_ADMIN_TOKEN": keys.admin_token},
                stdout=log, stderr=subprocess.STDOUT)
            try:
                base = f"http://127.0.0.1:{port}"
                system.wait("the API to answer", lambda: _ok(f"{base}/healthz"))
                now = clock.utcnow()

                def hook(kind: str, product: str, at: dt.datetime) -> str:
                    body = wix.sign_event(keys.private_key, kind, "policy-e2e", wix.event_fields(
                        kind, product=product, at=at), now=clock.utcnow())
                    answer = httpx.post(f"{base}/api/webhooks/billing", content=body)
                    assert answer.status_code == 200, answer.text
                    return str(answer.json()["status"])

                auth = {"Authorization": "Bearer " + tokens.sign(
                    keys.app_secret, "policy-e2e", now=clock.utcnow())}
                assert hook("PaidPlanPurchased", "starter", now - dt.timedelta(hours=1)) == (
                    "applied")
                used = httpx.post(f"{base}/api/credits/consume", headers=auth,
                                  json={"amount": 40, "idempotencyKey": "e2e-40"})
                assert used.status_code == 200, used.text
                assert hook("PaidPlanChanged", "pro", now) == "applied"
                credits = httpx.get(f"{base}/api/billing/credits", headers=auth).json()
                pro = next(p for p in catalog.current(system.engine) if p.id == "pro")
                assert (credits["plan"], credits["creditsTotal"], credits["creditsUsed"]) == (
                    "pro", pro.monthly_credits, 40)  # an earlier test changed pro's credits
                assert credits["inSync"] is True
                policy = httpx.get(f"{base}/api/admin/policy", headers={
                    "Authorization": f"Bearer {keys.admin_token}"}).json()
                assert (policy["usageOnPlanChange"], policy["source"]) == (
                    "Preserve", "CreditSync creditsync/creditsync")
            finally:
                api.terminate()
                api.wait(20)
    finally:
        system.patch("creditsyncs", "creditsync", {"usageOnPlanChange": "Reset"})
    system.wait("the policy back to Reset", lambda: policy_store.current(
        system.engine).policy.usage_on_plan_change == "Reset")


def _instance(system: System, instance_id: str) -> tuple[str, int]:
    inst = models.INSTANCES
    with database.read(system.engine) as conn:
        row = conn.execute(sa.select(inst.c.plan_id, inst.c.credits_total)
                           .where(inst.c.instance_id == instance_id)).one()
    return str(row.plan_id), int(row.credits_total)


def _audited(system: System, instance_id: str) -> bool:
    inst = models.INSTANCES
    with database.read(system.engine) as conn:
        return conn.execute(sa.select(inst.c.last_audited_at).where(
            inst.c.instance_id == instance_id)).scalar_one() is not None


def test_the_operator_audits_the_marketplace_and_heals_a_missed_purchase(
        system: System) -> None:
    """An operator with the marketplace source on (the stand-in) asks about every instance
    on `spec.marketplaceAudit.interval`: a purchase whose webhook never came is healed and
    reported in `lastAudit`; a marketplace that answers 503 makes it Degraded
    (MarketplaceUnavailable) until it answers again."""
    system.wait("a converged system", lambda: system.drifted() == [])
    standin = marketplace_standin.StandIn(app_id="e2e-app", app_secret="e2e-app-secret")
    inst = models.INSTANCES
    with database.read(system.engine) as conn:
        rows = conn.execute(sa.select(inst.c.instance_id, inst.c.plan_id)
                            .order_by(inst.c.instance_id)).all()
    default = next(p.id for p in catalog.current(system.engine) if p.default)
    for row in rows:  # the marketplace agrees with every instance ...
        if row.plan_id != default:
            standin.set_paid(row.instance_id, row.plan_id)
    missed, later = [r.instance_id for r in rows if r.plan_id == default][:2]
    standin.set_paid(missed, "pro")  # ... but one: it bought pro, and no webhook came
    credits = {p.id: p.monthly_credits for p in catalog.current(system.engine)}
    pro, starter = credits["pro"], credits["starter"]
    served = marketplace_standin.serve(standin)
    for op in system.operators:
        if op.running():
            op.stop()
    operator = OperatorProcess("operator-marketplace", system.log_dir, {
        **system.env, "CREDITSYNC_WIX_APP_ID": standin.app_id,
        "CREDITSYNC_WIX_API_URL": served.url, "CREDITSYNC_APP_SECRET": standin.app_secret,
        "CREDITSYNC_MARKETPLACE_RATE": "200"}, ("--namespace", NS))
    system.operators.append(operator)
    try:
        system.wait("the operator to start with the marketplace on", lambda: (
            f"marketplace audit on at {served.url}" in operator.log()))
        # instances never asked about are due at once, whatever the interval
        system.wait("the first audit healing the missed purchase",
                    lambda: _instance(system, missed) == ("pro", pro), timeout=60)
        system.patch("creditsyncs", "creditsync", {"marketplaceAudit": {"interval": "2s"}})
        system.wait("the first pass asking about the next one", lambda: _audited(system, later))
        standin.set_paid(later, "starter")  # bought after the first pass; no webhook either
        system.wait("the audit on its 2s schedule healing the next one",
                    lambda: _instance(system, later) == ("starter", starter), timeout=60)
        obj = system.wait_sync("lastAudit in the status", lambda s: (
            s["status"].get("lastAudit", {}).get("checked", 0) > 0))
        last = obj["status"]["lastAudit"]
        assert set(last) == {"time", "checked", "disagreed", "healed", "errors"}  # declared
        assert last["errors"] == 0
        assert dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(
            last["time"].replace("Z", "+00:00")) < dt.timedelta(minutes=1)
        assert status_of(obj, "Degraded") == ("False", "AsExpected")
        system.wait("the missed-webhook alert", lambda: [
            t for t in system.http.texts()
            if f"missed webhook healed: instance {later} free → starter" in t])
        events = models.WEBHOOK_EVENTS
        with database.read(system.engine) as conn:
            snapshots = conn.execute(sa.select(events.c.instance_id, events.c.status).where(
                events.c.event_type == "MarketplaceSnapshot")).all()
        assert sorted(tuple(r) for r in snapshots) == sorted(
            [(missed, "applied"), (later, "applied")])  # nobody else differed
        assert standin.token_requests[later] == 1  # one token per instance per lifetime
        assert standin.instance_requests[later] >= 2
        assert system.drifted() == []

        standin.fail_with(503)
        obj = system.wait_sync("Degraded/MarketplaceUnavailable", lambda s: status_of(
            s, "Degraded") == ("True", "MarketplaceUnavailable"), timeout=60)
        message = condition(obj, "Degraded")["message"]
        assert "the marketplace audit could not check any of" in message
        assert "answered GET /apps/v1/instance with 503" in message
        assert obj["status"]["lastAudit"]["checked"] == 0
        assert obj["status"]["lastAudit"]["errors"] > 0
        assert status_of(obj, "Ready")[0] == "True"  # convergence is fine
        system.wait("the Degraded event", lambda: [
            e for e in system.events("creditsync", "Degraded")
            if e.message.startswith("MarketplaceUnavailable: ")])
        system.wait("the degraded alert", lambda: [
            t for t in system.http.texts() if "is degraded: MarketplaceUnavailable" in t])
        assert _instance(system, missed) == ("pro", pro)  # an error changes nobody

        standin.heal()
        obj = system.wait_sync("recovery once the marketplace answers", lambda s: status_of(
            s, "Degraded") == ("False", "AsExpected"), timeout=60)
        assert obj["status"]["lastAudit"]["errors"] == 0
        system.wait("the Recovered event", lambda: [
            e for e in system.events("creditsync", "Recovered")
            if e.message == "no longer MarketplaceUnavailable"])
        system.wait("the recovery alert", lambda: [
            t for t in system.http.texts() if "No longer MarketplaceUnavailable" in t])
    finally:
        standin.heal()
        system.patch("creditsyncs", "creditsync", {"marketplaceAudit": {"interval": "6h"}})
    system.wait("a converged system", lambda: system.drifted() == [])
    assert operator.stop() == 0  # before its marketplace goes away
    served.stop()
    plain = system.start_operator("operator-3")  # as before: the marketplace source off
    system.wait("the plain operator to start", lambda: "marketplace audit off" in plain.log())


def _ok(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=1).status_code == 200
    return False
