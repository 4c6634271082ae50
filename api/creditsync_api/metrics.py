"""Prometheus metrics, one registry per app (so each test's app counts from zero).

Counters and the latency histogram count what this process did. The drifted-instance,
inbox-backlog and app-event gauges are read from the database at scrape time, so every
replica (and the operator's runs) report the same truth; when the database is down they are
left out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from creditsync import audit, clock, convergence, marketplace, outbox, reports, subscriptions

log = logging.getLogger("creditsync.api.metrics")

KNOWN_EVENTS = frozenset(subscriptions.EVENT_TYPES)


class Metrics:
    """Everything the API records, registered in its own registry."""

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.webhooks = Counter(
            "creditsync_webhooks", "Billing webhooks answered, by event type and outcome "
            "(an inbox status, or rejected/malformed/unavailable).",
            ["event_type", "outcome"], registry=r)
        self.signature_failures = Counter(
            "creditsync_webhook_signature_failures",
            "Webhooks refused with 401, by reason (nothing stored).", ["reason"], registry=r)
        self.apply_seconds = Histogram(
            "creditsync_webhook_apply_seconds",
            "Time from a verified webhook to its answer: store in the inbox, apply, converge.",
            buckets=(.002, .005, .01, .02, .05, .1, .25, .5, 1.0, 2.5), registry=r)
        self.sync_runs = Counter(
            "creditsync_sync_runs", "Convergence runs done by this process, by trigger.",
            ["trigger"], registry=r)
        self.repairs = Counter(
            "creditsync_repairs", "Instances changed by this process's convergence runs, by "
            "trigger.", ["trigger"], registry=r)
        self.consume = Counter(
            "creditsync_consume", "Credit consumption requests, by outcome.", ["outcome"],
            registry=r)
        self.reservations = Counter(
            "creditsync_reservations", "Reservation requests, by action (reserve, commit, "
            "release) and outcome (held, committed, released, replayed, or the error code).",
            ["action", "outcome"], registry=r)
        self.key_failures = Counter(
            "creditsync_service_key_failures", "Service keys refused with 401, by reason.",
            ["reason"], registry=r)
        self.token_failures = Counter(
            "creditsync_instance_token_failures", "Instance tokens refused, by reason.",
            ["reason"], registry=r)
        self.admin_auth_failures = Counter(
            "creditsync_admin_auth_failures", "Admin API requests refused with 401, by reason "
            "(missing_admin_token, bad_admin_token).", ["reason"], registry=r)
        self.marketplace_requests = Counter(
            "creditsync_marketplace_requests", "Requests to the marketplace's API, by endpoint "
            "(token, instance) and outcome (ok, an HTTP status, timeout, unreachable, invalid).",
            ["endpoint", "outcome"], registry=r)
        self.marketplace_seconds = Histogram(
            "creditsync_marketplace_request_seconds",
            "Latency of the marketplace's API, by endpoint.", ["endpoint"],
            buckets=(.01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0), registry=r)
        self.marketplace_token_cache_hits = Counter(
            "creditsync_marketplace_token_cache_hits",
            "Lookups that reused a cached access token.", registry=r)
        self.disagreements = Counter(
            "creditsync_marketplace_disagreements", "Instances on which the marketplace "
            "disagreed with our subscription, by action (healed, would_heal, quarantined, "
            "none).", ["action"], registry=r)
        self.deliveries = Counter(
            "creditsync_app_event_deliveries", "Attempts to deliver events to the app made by "
            "this process, by outcome (delivered; retry: failed, tried again later; dead: "
            "failed for the last time).", ["outcome"], registry=r)
        self.gauges = _DatabaseGauges(engine)
        r.register(self.gauges)

    def exposition(self) -> CollectorRegistry:
        """What `/metrics` shows: this registry, or, under several worker processes
        (`creditsync api --workers N` sets `PROMETHEUS_MULTIPROC_DIR`), every worker's
        counters summed by prometheus_client's multiprocess collector, plus the gauges read
        from the database."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return self.registry
        shown = CollectorRegistry()
        multiprocess.MultiProcessCollector(shown)  # type: ignore[no-untyped-call]
        shown.register(self.gauges)
        return shown

    def webhook(self, event_type: str, outcome: str) -> None:
        label = event_type if event_type in KNOWN_EVENTS else "other"
        self.webhooks.labels(label, outcome).inc()

    def marketplace_request(self, endpoint: str, outcome: str, seconds: float) -> None:
        """The marketplace client's hook: one request and how it ended."""
        if outcome == marketplace.CACHED:
            self.marketplace_token_cache_hits.inc()
            return
        self.marketplace_requests.labels(endpoint, outcome).inc()
        self.marketplace_seconds.labels(endpoint).observe(seconds)

    def observe_audit(self, report: audit.Report) -> None:
        for found in report.disagreements:
            self.disagreements.labels(found.action.value).inc()

    def observe_deliveries(self, outcomes: dict[str, int]) -> None:
        """The loop's hook: one `outbox.deliver_due` and its outcomes."""
        for outcome, count in outcomes.items():
            self.deliveries.labels(outcome).inc(count)

    def observe_run(self, summary: convergence.Summary) -> None:
        """Record a convergence run (also the hook `creditsync run` gives the loop)."""
        if summary.dry_run:
            return
        self.sync_runs.labels(summary.trigger).inc()
        self.repairs.labels(summary.trigger).inc(summary.repaired)


class _DatabaseGauges(Collector):
    def __init__(self, engine: Callable[[], Engine]) -> None:
        self.engine = engine

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            engine = self.engine()
            backlog_counts = reports.inbox_backlog(engine)
            drifted = reports.last_full_run_drifted(engine)
            event_counts = outbox.counts(engine)
            oldest = outbox.oldest_pending_age(engine, clock.utcnow())
            missed = reports.last_full_scan_missed(engine)
        except (sa.exc.SQLAlchemyError, RuntimeError) as exc:
            log.warning("metrics: database unavailable (%s); gauges left out", exc)
            return
        backlog = GaugeMetricFamily(
            "creditsync_inbox_backlog",
            "Webhook events waiting: pending (retried), quarantined (unknown product), "
            "failed (gave up; replay from the admin API).", labels=["status"])
        for status, count in backlog_counts.items():
            backlog.add_metric([status], count)
        yield backlog
        events = GaugeMetricFamily(
            "creditsync_app_events",
            "Events to the app in the outbox, by status: pending (the backlog, to be sent), "
            "delivered, dead (gave up; replay from the admin API).", labels=["status"])
        for status, count in event_counts.items():
            events.add_metric([status], count)
        yield events
        yield GaugeMetricFamily(
            "creditsync_app_event_oldest_pending_seconds",
            "Age of the oldest event to the app not yet delivered (0: none pending).",
            value=oldest or 0.0)
        if drifted is not None:
            yield GaugeMetricFamily(
                "creditsync_drifted_instances",
                "Instances found drifted by the latest full convergence run (a full scan: those "
                "its ticks had missed).", value=drifted)
        if missed is not None:
            yield GaugeMetricFamily(
                "creditsync_full_scan_missed",
                "Instances the latest full scan changed that no incremental tick had been told "
                "about (0 in a correct system; alerts when not).", value=missed)

