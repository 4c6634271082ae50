"""`creditsync dev`: tools for demos, benchmarks and trying creditsync locally.

`webhook` and `token` sign with the keys `creditsync run --dev` made (the signing formats
live in `creditsync_api`, imported lazily here).
"""

from __future__ import annotations

import datetime as dt
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import click

from creditsync import clock, seed
from creditsync.cli.context import Context, pass_context

if TYPE_CHECKING:
    from creditsync_api.devkeys import DevKeys


@click.group("dev")
def group() -> None:
    """Development helpers (local data and test signing)."""


@group.command("seed")
@click.option("--instances", type=click.IntRange(min=0), required=True)
@click.option("--drifted", type=click.FloatRange(0, 100), default=10.0, show_default=True,
              help="Percent of instances written drifted (stuck at the wrong credits).")
@click.option("--prefix", default="seed-", show_default=True, help="Instance id prefix.")
@pass_context
def seed_cmd(ctx: Context, instances: int, drifted: float, prefix: str) -> None:
    """Write N instances, round(N × PCT / 100) of them drifted, without converging."""
    ctx.require_schema()
    count = seed.seed(ctx.engine, instances, drifted, now=clock.utcnow(), prefix=prefix)
    click.echo(f"seeded {instances:,} instances ({count:,} drifted); "
               "`creditsync check` lists them, `creditsync sync --all` repairs them")


_dev_dir = click.option("--dev-dir", type=click.Path(file_okay=False, path_type=Path),
                        default=Path(".creditsync-dev"), show_default=True,
                        help="Where `creditsync run --dev` keeps the development keys.")


def _keys(dev_dir: Path) -> DevKeys:
    from creditsync_api import devkeys

    try:
        return devkeys.load(dev_dir)
    except devkeys.DevKeysMissingError as exc:
        raise click.ClickException(str(exc)) from exc


def _time(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time") from exc
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment


@group.command("webhook")
@click.argument("event_type")
@click.option("--instance", "instance_id", required=True, help="The instance id.")
@click.option("--product", help="vendorProductId (a plan id or alias), for plan events.")
@click.option("--previous-product", help="previousVendorProductId (PaidPlanChanged).")
@click.option("--at", "at", help="operationTimeStamp, ISO 8601 (default: now; none for "
                                 "AppInstalled/AppRemoved, which use the JWT's iat).")
@click.option("--expires", help="expiresOn, ISO 8601 (e.g. for PaidPlanAutoRenewalCancelled).")
@click.option("--forge", is_flag=True, help="Sign with a throwaway key: the API must refuse it.")
@click.option("--post", "post_url", metavar="URL",
              help="POST it to URL and print the answer, instead of printing the JWT.")
@_dev_dir
def webhook(event_type: str, instance_id: str, product: str | None,
            previous_product: str | None, at: str | None, expires: str | None, forge: bool,
            post_url: str | None, dev_dir: Path) -> None:
    """Sign a billing webhook EVENT_TYPE (e.g. PaidPlanPurchased) as the marketplace would.

    Prints the JWT (the body to POST to /api/webhooks/billing), or posts it with --post.
    """
    from creditsync_api import devkeys, wix

    now = clock.utcnow()
    when = _time(at)
    if when is None and event_type not in ("AppInstalled", "AppRemoved"):
        when = now
    key = devkeys.generate_private_key() if forge else _keys(dev_dir).private_key
    fields = wix.event_fields(event_type, product=product, at=when, expires=_time(expires),
                              previous_product=previous_product)
    token = wix.sign_event(key, event_type, instance_id, fields, now=now)
    if post_url is None:
        click.echo(token)
        return
    status, answer = _post(post_url, token)
    click.echo(f"{status} {answer}")
    if not 200 <= status < 300:
        sys.exit(1)


def _post(url: str, body: str) -> tuple[int, str]:
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r}: --post needs an http:// or https:// URL")
    request = urllib.request.Request(  # noqa: S310 (the scheme is checked above)
        url, data=body.encode(), method="POST", headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except urllib.error.URLError as exc:
        raise click.ClickException(f"cannot reach {url}: {exc.reason}") from exc


@group.command("token")
@click.option("--instance", "instance_id", required=True, help="The instance id.")
@click.option("--uid", default="dev-owner", show_default=True, help="The user id.")
@click.option("--anonymous", is_flag=True, help="A visitor's token (aid, no uid): refused.")
@click.option("--age", type=click.IntRange(min=0), default=0,
              help="Sign it this many seconds in the past.")
@_dev_dir
def token(instance_id: str, uid: str, anonymous: bool, age: int, dev_dir: Path) -> None:
    """Print an instance token for INSTANCE (use as `Authorization: Bearer <token>`)."""
    from creditsync_api import tokens

    keys = _keys(dev_dir)
    signed = clock.utcnow() - dt.timedelta(seconds=age)
    click.echo(tokens.sign(keys.app_secret, instance_id, now=signed,
                           uid=None if anonymous else uid,
                           aid="dev-visitor" if anonymous else None))


@group.command("marketplace")
@click.option("--port", default=8090, show_default=True, type=click.IntRange(0, 65535))
@click.option("--app-id", default="dev-app", show_default=True,
              help="The client id it accepts (set CREDITSYNC_WIX_APP_ID to the same).")
@click.option("--dev-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".creditsync-dev"), show_default=True,
              help="Its client secret is the app secret `creditsync run --dev` made here.")
@click.option("--paid", "paid", multiple=True, metavar="INSTANCE=PACKAGE",
              help="Say from the start that INSTANCE pays for PACKAGE (repeatable).")
def marketplace_cmd(port: int, app_id: str, dev_dir: Path, paid: tuple[str, ...]) -> None:
    """Serve a STAND-IN of the marketplace's API (not Wix) on 127.0.0.1, for trying the
    audit: `PUT /_standin/instances/ID` with {"package": "pro"} or {"free": true} sets what
    it says about an instance."""
    from creditsync import marketplace_standin

    standin = marketplace_standin.StandIn(app_id, _keys(dev_dir).app_secret)
    for item in paid:
        instance_id, sep, package = item.partition("=")
        if not sep or not instance_id or not package:
            raise click.UsageError(f"--paid {item!r}: use INSTANCE=PACKAGE, e.g. demo-2=pro")
        standin.set_paid(instance_id, package)
    running = marketplace_standin.serve(standin, port=port)
    exe = Path(sys.argv[0]).name if Path(sys.argv[0]).name == "creditsync" else sys.argv[0]
    click.echo(f"""marketplace STAND-IN (not Wix) on {running.url}; Ctrl-C stops it.
Point creditsync at it, in the terminal that runs `creditsync run --dev`:

  export CREDITSYNC_WIX_APP_ID={app_id} CREDITSYNC_WIX_API_URL={running.url} \\
         CREDITSYNC_APP_SECRET=$(cat {dev_dir}/app-secret)

Say that an instance pays for Pro (its webhook never came), then heal it:

  curl -s -X PUT -d '{{"package": "pro"}}' {running.url}/_standin/instances/demo-2
  {exe} audit --instance demo-2      # our plan free → marketplace pro: healed
""")
    try:
        running.thread.join()
    except KeyboardInterrupt:
        running.stop()
