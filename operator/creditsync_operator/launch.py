"""Run the operator in this process: what `creditsync operator` does once its options parse.

Peering is on unless `standalone`: the `creditsync` KopfPeering is made sure to exist and
kopf is told it is mandatory, so a replica stays paused until it knows whether another one
is active. Among replicas the oldest wins: the default priority falls with the start time,
so a rolling update's new pod waits until the old one has gone.

kopf watches namespaces and CRDs only when a namespace pattern needs it: serving named
namespaces (or all of them) then takes no cluster-wide reads, which is what the Helm
chart's least-privileged Role grants. The CRDs are those present at start-up.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence

import kopf

from creditsync_operator import peering, resources


def default_priority() -> int:
    """A priority that is higher the earlier this process started (jitter breaks ties)."""
    return -(int(time.time() * 1000) * 1000 + random.randrange(1000))


class _KopfExtras(logging.Filter):
    """Shrink kopf's per-object log extras (its whole settings object) to the object's name."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        fields.pop("settings", None)
        fields.pop("k8s_skip", None)
        ref = fields.pop("k8s_ref", None)
        if isinstance(ref, dict) and ref.get("name"):
            where = f"{ref.get('namespace')}/" if ref.get("namespace") else ""
            fields["object"] = f"{ref.get('kind')} {where}{ref['name']}"
        return True


def settings_for(namespaces: Sequence[str]) -> kopf.OperatorSettings:
    """kopf's settings before start-up (the startup handler adds the rest)."""
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = not any(peering.is_pattern(ns) for ns in namespaces)
    return settings


def tidy_logs() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _KopfExtras) for f in handler.filters):
            handler.addFilter(_KopfExtras())


def run(
    *,
    namespaces: Sequence[str] = (),
    all_namespaces: bool = False,
    liveness: str | None = None,
    standalone: bool = False,
    priority: int | None = None,
) -> None:
    """Run until SIGINT/SIGTERM. Raises `peering.PeeringError` when peering cannot work."""
    if all_namespaces == bool(namespaces):
        raise ValueError("serve either some namespaces or all of them")
    tidy_logs()
    if not standalone:
        peering.ensure(namespaces, clusterwide=all_namespaces)
    kopf.run(
        settings=settings_for(namespaces),
        clusterwide=all_namespaces,
        namespaces=list(namespaces),
        standalone=standalone,
        priority=None if standalone else (default_priority() if priority is None else priority),
        peering_name=None if standalone else resources.PEERING_NAME,
        liveness_endpoint=liveness,
    )
