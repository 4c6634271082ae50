"""The names the operator works with: our custom resources, annotations and peering."""

from __future__ import annotations

GROUP = "creditsync.io"
VERSION = "v1alpha1"
CREDITPLANS = (GROUP, VERSION, "creditplans")
CREDITSYNCS = (GROUP, VERSION, "creditsyncs")

ANNOTATION_PREFIX = "creditsync.io"
FINALIZER = "creditsync.io/finalizer"
COMPONENT = "creditsync-operator"

# operators that share this KopfPeering see each other; one stays active
PEERING_NAME = "creditsync"
PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"
