"""`creditsync` root command: servers (`run`, `api`, `operator`) and `db`."""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

import click

from creditsync import (
    catalog,
    clock,
    config,
    logs,
    plans,
    policy,
    policy_store,
)
from creditsync.cli import (
    audit_cmd,
    dev,
    drift,
    keys_cmd,
    operator_cmd,
    plans_cmd,
    policy_cmd,
    serve,
    webhooks,
)
from creditsync.cli.context import Context, pass_context
from creditsync.storage import database, schema

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("creditsync.cli")
LOG_META = "creditsync.log"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-json/--log-text", default=None,
              help="JSON lines (default when stderr is not a terminal) or readable text.")
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_json: bool | None) -> None:
    """Keep every app instance's credits equal to what its plan pays for."""
    logs.configure(log_level, log_json)
    ctx.meta[LOG_META] = (log_level, log_json)  # what worker processes configure again
    try:
        ctx.obj = Context(config.from_env())
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_context
def db_upgrade(ctx: Context) -> None:
    """Create or upgrade the schema to this version's (idempotent)."""
    before = schema.current(ctx.engine)
    schema.upgrade(ctx.engine)
    seeded = seed_catalog(ctx)
    click.echo(f"schema {before or 'empty'} → {schema.head()} at "
               f"{database.describe(ctx.settings.database_url)}"
               + ("; seeded the plan catalog" if seeded else ""))


def prepare_standalone(ctx: Context) -> None:
    """`run` upgrades its embedded SQLite by itself; elsewhere the schema must be current."""
    if database.is_sqlite(ctx.engine):
        schema.upgrade(ctx.engine)
    ctx.require_schema()
    if seed_catalog(ctx):
        log.info("seeded the plan catalog from %s",
                 ctx.settings.plans_file or "the built-in defaults")


def seed_catalog(ctx: Context) -> bool:
    """Fill an empty catalog from CREDITSYNC_PLANS_FILE or the defaults; True if it wrote."""
    try:
        return catalog.seed_if_empty(ctx.engine, ctx.settings.plans_file, clock.utcnow())
    except plans.CatalogError as exc:
        raise click.ClickException(
            f"CREDITSYNC_PLANS_FILE: {exc} (nothing was changed)") from exc


_host = click.option("--host", default="127.0.0.1", show_default=True, help="Listen address.")
_port = click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
_access_log = click.option("--access-log/--no-access-log", default=False, show_default=True,
                           help="Log every HTTP request.")
_workers = click.option(
    "--workers", type=click.IntRange(1, 64), default=None,
    help="API worker processes (default: the number of cores this process may use).")


def serve_api(ctx: Context, app: FastAPI, host: str, port: int, access_log: bool,
              workers: int | None) -> None:
    """Serve `app` in this process, or in `workers` processes (default: one per core)."""
    level, json_lines = click.get_current_context().meta.get(LOG_META, ("INFO", None))
    serve.serve(app, host, port, access_log, workers=workers or serve.default_workers(),
                settings=ctx.settings, log_level=level, log_json=json_lines)


@cli.command()
@_host
@_port
@click.option("--no-api", is_flag=True, help="Only the convergence loop, no HTTP server.")
@click.option("--dev", is_flag=True,
              help="Create local development keys in ./.creditsync-dev/ if missing, serve with "
                   "them, and print commands to try.")
@_access_log
@_workers
@pass_context
def run(ctx: Context, host: str, port: int, no_api: bool, dev: bool, access_log: bool,
        workers: int | None) -> None:
    """Standalone: the API plus the convergence and retry loop (a full scan at start-up and
    every CREDITSYNC_FULL_SCAN_INTERVAL, a tick every CREDITSYNC_SYNC_INTERVAL; due inbox
    retries every few seconds). With several API workers, this process alone converges."""
    if dev:
        serve.use_dev_keys(ctx, host)
    if not no_api:
        serve.require_secrets(ctx)
    prepare_standalone(ctx)
    try:
        alerter = ctx.factory.alerter()
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    stored = policy_store.write_from_environment(ctx.engine, policy.from_settings(ctx.settings),
                                                 clock.utcnow())
    if stored.from_creditsync:
        log.warning("converging with the policy %s wrote, not this environment's",
                    stored.source, extra={"policy_source": stored.source})
    app = None if no_api else serve.build_app(ctx)
    metrics = None if app is None else app.state.creditsync.metrics
    try:
        client = ctx.factory.marketplace_client(
            on_request=None if metrics is None else metrics.marketplace_request)
        deliverer = ctx.factory.app_webhooks()
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    loop = ctx.factory.runner(alerter=alerter, client=client, deliverer=deliverer)
    log.info("creditsync running on %s, ticking every %s, scanning in full every %s%s",
             database.describe(ctx.settings.database_url),
             config.format_duration(ctx.settings.sync_interval),
             config.format_duration(ctx.settings.full_scan_interval),
             "" if client is None or not ctx.settings.marketplace_audit_interval else
             f"; asking the marketplace about each instance every "
             f"{config.format_duration(ctx.settings.marketplace_audit_interval)}")
    if app is None:
        # The loop runs in its own thread: a signal handler that sets the event the main
        # thread is waiting on would deadlock on the event's lock.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: loop.stopping.set())
        thread = loop.start()
        while thread.is_alive():
            thread.join(0.5)
        return
    workers = workers or serve.default_workers()
    if workers == 1:  # the loop's runs count in this process's metrics
        loop.on_run.append(app.state.creditsync.metrics.observe_run)
        loop.on_audit.append(app.state.creditsync.metrics.observe_audit)
        loop.on_deliver.append(app.state.creditsync.metrics.observe_deliveries)
    thread = loop.start()
    if dev:
        click.echo(serve.dev_banner(host, port))
    try:
        serve_api(ctx, app, host, port, access_log, workers)
    finally:
        loop.stopping.set()
        thread.join(timeout=30)


@cli.command()
@_host
@_port
@_access_log
@_workers
@pass_context
def api(ctx: Context, host: str, port: int, access_log: bool, workers: int | None) -> None:
    """The API alone (the sidecar): webhooks, instance and admin endpoints, health, metrics.

    Needs the secrets and a current schema (`creditsync db upgrade`); converges only what
    its requests ask for (run the loop with `creditsync run --no-api` or the operator).
    """
    serve.require_secrets(ctx)
    ctx.require_schema()
    ctx.engine.dispose()  # the app builds its own pool
    serve_api(ctx, serve.build_app(ctx), host, port, access_log, workers)


cli.add_command(audit_cmd.command)
cli.add_command(drift.check)
cli.add_command(drift.sync)
cli.add_command(keys_cmd.group)
cli.add_command(plans_cmd.group)
cli.add_command(policy_cmd.group)
cli.add_command(webhooks.group)
cli.add_command(dev.group)
cli.add_command(operator_cmd.command)


def main() -> None:
    cli(prog_name="creditsync")


if __name__ == "__main__":
    main()
