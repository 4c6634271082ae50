"""Serving the API from the CLI: secrets (or dev keys), uvicorn, and the `--dev` banner.

`creditsync_api` is imported lazily, inside these functions, so commands that never serve
(`db`, `check`, `sync`, `plans`) do not load FastAPI.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from creditsync import config, logs
from creditsync.cli.context import Context

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("creditsync.cli")


def use_dev_keys(ctx: Context, host: str) -> None:
    """Create the local development keys if missing and make them this process's secrets.

    Anyone who can read ./.creditsync-dev can sign webhooks and tokens for this server, so
    it only listens on a loopback address."""
    from creditsync_api import devkeys

    if not is_loopback(host):
        raise click.UsageError(
            f"--dev serves with development keys that anyone who reads ./.creditsync-dev can "
            f"sign with, so it listens only on a loopback address (127.0.0.1, ::1, "
            f"localhost), not --host {host or repr(host)}; to serve other machines, set real "
            "secrets (CREDITSYNC_WIX_PUBLIC_KEY, CREDITSYNC_APP_SECRET, "
            "CREDITSYNC_ADMIN_TOKEN) and drop --dev")

    keys, created = devkeys.ensure(devkeys.DEFAULT_DIR)
    ctx.use_settings(keys.apply(ctx.settings))
    log.warning("%s development keys in %s: never use them in production",
                "created" if created else "using", keys.directory.resolve())


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name other than localhost: it may resolve to anything
        return False


class RedactInstanceTokens(logging.Filter):
    """Access log lines without the `?instance=` token (it is a credential for a day)."""

    TOKEN = re.compile(r"([?&]instance=)[^&#\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.TOKEN.sub(r"\1[redacted]", arg) if isinstance(arg, str)
                                else arg for arg in record.args)
        if isinstance(record.msg, str):
            record.msg = self.TOKEN.sub(r"\1[redacted]", record.msg)
        return True


def redact_access_log() -> None:
    """Install `RedactInstanceTokens` on uvicorn's access logger (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactInstanceTokens) for f in access.filters):
        access.addFilter(RedactInstanceTokens())


def require_secrets(ctx: Context) -> None:
    try:
        ctx.settings.require_secrets()
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def build_app(ctx: Context) -> FastAPI:
    from creditsync_api import main as api

    try:
        return api.create_app(ctx.settings)
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


WORKER_ENV = "CREDITSYNC_INTERNAL_WORKER"  # what a worker process needs beyond the settings
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's: counters shared by workers
WORKER_START_S = 120  # how long a worker may take to start answering its supervisor


def default_workers() -> int:
    """The number of cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def serve(app: FastAPI, host: str, port: int, access_log: bool, *, workers: int = 1,
          settings: config.Settings | None = None, log_level: str = "INFO",
          log_json: bool | None = None) -> None:
    """Run uvicorn until SIGINT/SIGTERM; a failed start-up (e.g. the schema) exits 3.

    `workers` above 1: that many processes, each building its app from `settings` (handed
    over in the environment, development keys included) and sharing its counters through
    prometheus_client's multiprocess directory; `app` was built here only to check them.
    """
    import uvicorn

    redact_access_log()
    options = {"host": host, "port": port, "log_config": None, "access_log": access_log,
               "lifespan": "on", "server_header": False, "timeout_graceful_shutdown": 10}
    if workers > 1:
        assert settings is not None
        log.info("serving the API on http://%s:%d with %d worker processes (OpenAPI at /docs)",
                 host, port, workers)
        with tempfile.TemporaryDirectory(prefix="creditsync-metrics-") as shared:
            os.environ.update(config.to_env(settings))
            os.environ[MULTIPROC_DIR] = shared
            os.environ[WORKER_ENV] = json.dumps({"level": log_level, "json": log_json})
            try:
                # a worker's first answer waits for its imports (seconds on a busy
                # machine): uvicorn's default 5 s would kill and restart it forever
                uvicorn.run("creditsync.cli.serve:worker_app", factory=True, workers=workers,
                            timeout_worker_healthcheck=WORKER_START_S,
                            **options)  # type: ignore[arg-type]
            finally:
                for name in (MULTIPROC_DIR, WORKER_ENV):
                    os.environ.pop(name, None)
        return
    server = uvicorn.Server(uvicorn.Config(app, **options))  # type: ignore[arg-type]
    log.info("serving the API on http://%s:%d (OpenAPI at /docs)", host, port)
    server.run()
    if not server.started:
        raise click.exceptions.Exit(3)


def worker_app() -> FastAPI:
    """One worker process's app (uvicorn's factory): logging and settings from the
    environment its parent (`serve`) prepared."""
    from creditsync_api import main as api

    wanted = json.loads(os.environ.get(WORKER_ENV, "{}"))
    logs.configure(wanted.get("level", "INFO"), wanted.get("json"))
    redact_access_log()
    return api.create_app(config.from_env())


def executable() -> str:
    """How to call this creditsync from a shell: its path, as the README's install leaves
    `.venv/bin` off PATH; the plain name when PATH finds this same executable."""
    running = Path(sys.argv[0])
    if running.name != "creditsync" or not running.is_file():  # e.g. `python -m`
        running = Path(sys.executable).parent / "creditsync"
        if not running.is_file():
            return "creditsync"
    running = running.absolute()
    on_path = shutil.which("creditsync")
    if on_path is not None and Path(on_path).resolve() == running.resolve():
        return "creditsync"
    return shlex.quote(str(running))


def dev_banner(host: str, port: int) -> str:
    base = f"http://{host}:{port}"
    hook = f"{base}/api/webhooks/billing"
    creditsync = executable()
    auth = f'"Authorization: Bearer $({creditsync} dev token --instance demo-1)"'
    return f"""
creditsync is running with development keys from ./.creditsync-dev (not for production).
In another terminal, in this directory, try:

  # Pro is bought for a new instance demo-1 (a signed PaidPlanPurchased webhook)
  {creditsync} dev webhook PaidPlanPurchased --instance demo-1 --product pro > purchase.jwt
  curl -s --data-binary @purchase.jwt {hook}           # "applied"
  curl -s -H {auth} {base}/api/billing/credits       # creditsTotal 5000
  curl -s --data-binary @purchase.jwt {hook}           # again: "duplicate", nothing changes
  {creditsync} dev webhook PaidPlanPurchased --instance demo-1 --product scale --forge --post {hook}
                                                       # forged: 401, nothing stored
  curl -s -X POST -H {auth} {base}/api/billing/sync-credits
  curl -s -H "Authorization: Bearer $(cat .creditsync-dev/admin-token)" {base}/api/admin/instances

OpenAPI: {base}/docs   metrics: {base}/metrics
"""
