"""creditsync's Kubernetes operator (kopf): run it with `creditsync operator`.

`kopf run -m creditsync_operator` also works: importing this package registers the
handlers. `startup` configures kopf and builds the shared database engine; `plans` mirrors
`CreditPlan` resources into the plan catalog; `sync` runs a daemon per `CreditSync` that
converges on its schedule and reports status, conditions and events (written through `kube`,
since kopf applies a daemon's own patch only when it exits); `audit` runs a second daemon per
`CreditSync` that asks the marketplace on `spec.marketplaceAudit.interval` when
`CREDITSYNC_WIX_APP_ID` turns the marketplace source on; `deliver` runs a third that sends
the outbox's events to the app when `CREDITSYNC_APP_WEBHOOK_URL` is set.
"""

from creditsync_operator import audit, deliver, plans, startup, sync

__all__ = ["audit", "deliver", "plans", "startup", "sync"]
