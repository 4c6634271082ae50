"""Status conditions, modelled once, per the Kubernetes API conventions.

A condition has `type`, `status` (True/False/Unknown), a CamelCase `reason`, a human
`message`, the `observedGeneration` it describes and `lastTransitionTime`, which moves only
when `status` changes. Conditions are written with a patch function (`patch_fn`), which
kopf applies to the freshest body as a JSON patch guarded by its resourceVersion, so a
merge never loses a transition time or a condition another writer added.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]

READY = "Ready"
CONVERGED = "Converged"
DEGRADED = "Degraded"


@dataclass(frozen=True)
class Condition:
    type: str
    status: Status
    reason: str
    message: str = ""

    def as_dict(self, generation: int | None, transition: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.type, "status": self.status, "reason": self.reason,
            "lastTransitionTime": transition,
        }
        if self.message:  # the API server turns an empty string in a list-map item to null
            out["message"] = self.message
        if generation is not None:
            out["observedGeneration"] = generation
        return out


def timestamp(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(
    existing: Sequence[Mapping[str, Any]],
    updates: Sequence[Condition],
    *,
    generation: int | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """`existing` with `updates` applied: a transition time changes only with the status."""
    by_type = {str(c.get("type")): c for c in existing}
    result = [dict(c) for c in existing]
    for update in updates:
        old = by_type.get(update.type)
        keep = old is not None and old.get("status") == update.status
        transition = str(old.get("lastTransitionTime")) if keep and old else timestamp(now)
        new = update.as_dict(generation, transition)
        index = next((i for i, c in enumerate(result) if c.get("type") == update.type), None)
        if index is None:
            result.append(new)
        else:
            result[index] = new
    return result


def get(conditions: Sequence[Mapping[str, Any]] | None, kind: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == kind), None)


def is_true(conditions: Sequence[Mapping[str, Any]] | None, kind: str) -> bool:
    found = get(conditions, kind)
    return found is not None and found.get("status") == "True"


PatchFn = Callable[[Any], None]  # kopf calls it with the raw body (a dict)


def patch_fn(updates: Sequence[Condition], *, generation: int | None, now: dt.datetime) -> PatchFn:
    """A kopf `patch.fns` function that sets `updates` on the body it is given."""
    frozen = tuple(updates)

    def apply(raw: Any) -> None:
        body: MutableMapping[str, Any] = raw
        status = body.get("status")
        if not isinstance(status, MutableMapping):
            status = body["status"] = {}
        status["conditions"] = merge(status.get("conditions") or [], frozen,
                                     generation=generation, now=now)

    return apply
