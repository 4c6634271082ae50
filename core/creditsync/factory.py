"""The one composition root: what every entry point builds from its settings.

The CLI (`cli.context.Context`), the API (its lifespan, `creditsync_api.deps.State`) and the
operator (its start-up handler, `creditsync_operator.state.Shared`) each hold one `Factory`
and take the engine, the alerter, the loop and the stored policy from it, so the three
processes are wired the same way (gafaelfawr's `Factory` is the model).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy.engine import Engine

from creditsync import alerts, config, delivery, ingest, marketplace, policy_store, runner
from creditsync.storage import database, schema

DEFAULT_POOL_SIZE = 5


@dataclass
class Factory:
    """Settings in; the engine (made on first use, owned here), alerter, loop, policy out."""

    settings: config.Settings
    pool_size: int = DEFAULT_POOL_SIZE
    given_engine: Engine | None = field(default=None, repr=False)

    @classmethod
    def standalone(cls, settings: config.Settings | None = None, *,
                   pool_size: int = DEFAULT_POOL_SIZE) -> Factory:
        """From `settings` (default: the environment)."""
        return cls(settings if settings is not None else config.from_env(), pool_size)

    @cached_property
    def engine(self) -> Engine:
        if self.given_engine is not None:
            return self.given_engine
        return database.create(self.settings.database_url, pool_size=self.pool_size)

    @property
    def owns_engine(self) -> bool:
        return self.given_engine is None

    def require_schema(self) -> None:
        """Raise `errors.SchemaOutdated` (saying what to run) unless the schema is current."""
        schema.require_current(self.engine)

    def alerter(self, *, source: str = "creditsync") -> alerts.Alerter | None:
        """The alerter the settings ask for (None: no alert target configured)."""
        return alerts.from_settings(self.settings, source=source)

    def policy(self) -> policy_store.Effective:
        """The policy every process converges with, as stored."""
        return policy_store.current(self.engine)

    def marketplace_client(
        self, on_request: marketplace.Hook | None = None
    ) -> marketplace.Client | None:
        """The marketplace's API, or None when `CREDITSYNC_WIX_APP_ID` is unset (source off).

        Raises `ConfigError` when the app id is set without `CREDITSYNC_APP_SECRET`.
        """
        app_id = self.settings.wix_app_id
        if not app_id:
            return None
        secret = self.settings.app_secret
        if secret is None or not secret.get_secret_value():
            raise config.ConfigError(
                "CREDITSYNC_WIX_APP_ID is set but CREDITSYNC_APP_SECRET is not: the marketplace "
                "source needs the app's secret (its OAuth client secret)")
        return marketplace.Client(self.settings.wix_api_url, app_id, secret.get_secret_value(),
                                  rate=self.settings.marketplace_rate, on_request=on_request)

    def app_webhooks(self) -> delivery.Client | None:
        """The client that sends events to the app, or None when `CREDITSYNC_APP_WEBHOOK_URL`
        is unset (events wait in the outbox). Raises `ConfigError` for a bad secret."""
        return delivery.from_settings(self.settings)

    def runner(self, *, alerter: alerts.Alerter | None = None,
               interval: dt.timedelta | None = None,
               client: marketplace.Client | None = None,
               deliverer: delivery.Client | None = None) -> runner.Runner:
        """The standalone convergence loop (and the periodic audit when `client` is given,
        the delivery of events to the app when `deliverer` is)."""
        return runner.Runner(self.engine, interval or self.settings.sync_interval,
                             self.settings.batch_size, alerter=alerter, marketplace=client,
                             audit_interval=self.settings.marketplace_audit_interval,
                             deliverer=deliverer,
                             full_scan_interval=self.settings.full_scan_interval)

    async def ingress(self, *, threads: int, pool_size: int) -> ingest.Ingress:
        """The webhook's ingest service on this engine (an async pool on PostgreSQL)."""
        return await ingest.Ingress.open(self.engine, threads=threads, pool_size=pool_size)

    def close(self) -> None:
        """Dispose of the engine if this factory made it."""
        if self.owns_engine and "engine" in self.__dict__:
            self.engine.dispose()
            del self.__dict__["engine"]
