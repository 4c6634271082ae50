"""`creditsync operator`: the Kubernetes operator (kopf), run in this process.

The operator package is imported only when the command runs, so every other command works
without loading kopf.
"""

from __future__ import annotations

import click


@click.command("operator")
@click.option("-n", "--namespace", "namespaces", multiple=True, metavar="NS",
              help="Serve CreditPlans and CreditSyncs in NS (repeatable; globs allowed).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Serve every namespace.")
@click.option("--liveness", metavar="URL", default=None,
              help="Serve a liveness probe, e.g. http://0.0.0.0:8080/healthz.")
@click.option("--standalone", is_flag=True,
              help="No peering with other replicas (only for a single replica).")
@click.option("--priority", type=int, default=None,
              help="Peering priority; by default the longest-running replica stays active.")
def command(
    namespaces: tuple[str, ...], all_namespaces: bool, liveness: str | None,
    standalone: bool, priority: int | None,
) -> None:
    """The Kubernetes operator: mirror CreditPlans into the catalog and converge on each
    CreditSync's schedule (`kopf run -m creditsync_operator` with these options).

    Reads CREDITSYNC_DATABASE_URL (the schema must be current: `creditsync db upgrade`) and
    the Kubernetes configuration (in-cluster, or KUBECONFIG). Replicas peer through the
    `creditsync` KopfPeering: one is active, the others wait.
    """
    if all_namespaces == bool(namespaces):
        raise click.UsageError("give --namespace NS (repeatable) or --all-namespaces")
    from creditsync_operator import launch, peering

    try:
        launch.run(namespaces=namespaces, all_namespaces=all_namespaces, liveness=liveness,
                   standalone=standalone, priority=priority)
    except peering.PeeringError as exc:
        raise click.ClickException(str(exc)) from exc
