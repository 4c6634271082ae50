"""creditsync's Kubernetes operator (kopf): run it with `creditsync operator`.

`kopf run -m creditsync_operator` also works: importing this package registers the
handlers. `startup` configures kopf and builds the shared database engine; `plans` mirrors
`CreditPlan` resources into the plan catalog; `sync` converges on each `CreditSync`'s
schedule and reports status, conditions and events.
"""

from creditsync_operator import plans, startup, sync

__all__ = ["plans", "startup", "sync"]
