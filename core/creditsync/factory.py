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

from creditsync import alerts, config, ingest, policy_store, runner
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

    def runner(self, *, alerter: alerts.Alerter | None = None,
               interval: dt.timedelta | None = None) -> runner.Runner:
        """The standalone convergence loop."""
        return runner.Runner(self.engine, interval or self.settings.sync_interval,
                             self.settings.batch_size, alerter=alerter)

    async def ingress(self, *, threads: int, pool_size: int) -> ingest.Ingress:
        """The webhook's ingest service on this engine (an async pool on PostgreSQL)."""
        return await ingest.Ingress.open(self.engine, threads=threads, pool_size=pool_size)

    def close(self) -> None:
        """Dispose of the engine if this factory made it."""
        if self.owns_engine and "engine" in self.__dict__:
            self.engine.dispose()
            del self.__dict__["engine"]
