"""How the operator starts: kopf settings, peering priority, logs, the CLI's options."""

from __future__ import annotations

import logging

import kopf
from click.testing import CliRunner

from creditsync.cli import operator_cmd
from creditsync_operator import launch, resources, startup


def test_kopf_keeps_its_state_under_our_names() -> None:
    settings = kopf.OperatorSettings()
    startup.configure(settings)
    assert settings.persistence.finalizer == "creditsync.io/finalizer"
    progress = settings.persistence.progress_storage
    assert isinstance(progress, kopf.AnnotationsProgressStorage)
    assert progress.prefix == "creditsync.io"
    diffbase = settings.persistence.diffbase_storage
    assert isinstance(diffbase, kopf.AnnotationsDiffBaseStorage)
    assert (diffbase.prefix, diffbase.key) == ("creditsync.io", "last-handled-configuration")
    assert settings.peering.name == resources.PEERING_NAME
    assert settings.posting.level == logging.WARNING
    assert settings.execution.max_workers == startup.MAX_WORKERS
    assert settings.queueing.worker_limit == startup.WORKER_LIMIT


def test_an_explicit_peering_name_is_kept() -> None:
    settings = kopf.OperatorSettings()
    settings.peering.name = "mine"
    startup.configure(settings)
    assert settings.peering.name == "mine"


def test_kopf_watches_namespaces_and_crds_only_for_namespace_patterns() -> None:
    # named namespaces, or all of them: no cluster-wide reads (the chart's Role has none)
    assert launch.settings_for(["creditsync"]).scanning.disabled
    assert launch.settings_for(["a", "b"]).scanning.disabled
    assert launch.settings_for([]).scanning.disabled  # --all-namespaces
    assert not launch.settings_for(["a", "team-*"]).scanning.disabled


def test_the_older_replica_has_the_higher_priority() -> None:
    older = launch.default_priority()
    newer = [launch.default_priority() for _ in range(50)]
    # started in the same millisecond at most ties within the jitter; a later start is lower
    assert all(p <= older + 999 for p in newer)


def test_kopf_log_extras_shrink_to_the_object_name() -> None:
    record = logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, "hi", None, None)
    record.__dict__.update(settings=kopf.OperatorSettings(), k8s_skip=False, k8s_ref={
        "kind": "CreditSync", "namespace": "ns", "name": "main", "uid": "u"})
    assert launch._KopfExtras().filter(record)
    assert record.__dict__["object"] == "CreditSync ns/main"
    assert not {"settings", "k8s_ref", "k8s_skip"} & set(record.__dict__)


def test_the_command_needs_namespaces_or_all() -> None:
    for args in ([], ["-n", "a", "--all-namespaces"]):
        result = CliRunner().invoke(operator_cmd.command, args)
        assert result.exit_code == 2
        assert "give --namespace NS (repeatable) or --all-namespaces" in result.output
