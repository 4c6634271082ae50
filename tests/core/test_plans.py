"""The plan catalog: defaults, YAML files, and clear errors that change nothing."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from creditsync import catalog, plans
from creditsync.storage import database
from tests.support.times import T0


def test_defaults_are_the_original_systems_plans() -> None:
    cat = plans.DEFAULT_CATALOG
    assert [(p.id, p.monthly_credits) for p in cat.plans] == [
        ("free", 100), ("starter", 1000), ("pro", 5000), ("scale", 25000)]
    assert cat.default.id == "free"


def test_aliases_resolve_marketplace_product_ids(tmp_path: Path) -> None:
    path = tmp_path / "plans.yaml"
    path.write_text("plans:\n  - {id: free, monthlyCredits: 100, default: true}\n"
                    "  - id: pro\n    monthlyCredits: 5000\n"
                    "    aliases: [pro-monthly, pro-yearly]\n    displayName: Pro\n")
    cat = plans.load_file(path)
    assert cat.resolve("pro-yearly") == cat.resolve("pro") == plans.Plan(
        "pro", 5000, ("pro-monthly", "pro-yearly"), "Pro")
    assert cat.resolve("enterprise") is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("plans:\n  - {id: free, monthlyCredits: -5, default: true}\n",
         "plan free: monthlyCredits is -5; it must be >= 0"),
        ("plans:\n  - {id: free, monthlyCredits: 100}\n",
         "no default plan: mark exactly one plan with `default: true`"),
        ("plans:\n  - {id: free, monthlyCredits: 100, default: true}\n"
         "  - {id: pro, monthlyCredits: 5000, default: true}\n",
         "plans free, pro are all marked default: keep exactly one"),
        ("plans:\n  - {id: free, monthlyCredits: 100, default: true, aliases: [x]}\n"
         "  - {id: pro, monthlyCredits: 5000, aliases: [x]}\n",
         "plan pro: alias 'x' is already used by plan free"),
        ("plans:\n  - {id: free, monthlyCredits: 100, default: true, credits: 3}\n",
         "plan free: unknown key(s) credits; allowed: aliases, default, displayName, id, "
         "monthlyCredits, rollover"),
        ("plans:\n  - {id: free, monthlyCredits: lots, default: true}\n",
         "plan free: monthlyCredits must be an integer, got 'lots'"),
        ("tiers: []\n", "expected a single top-level key `plans` holding a list"),
        ("plans:\n  - {id: free, monthlyCredits: 100, default: true,\n"
         "     rollover: {maxCredits: 10}}\n",
         "plan free: rollover must be a mapping with exactly maxCredits and expiresAfter "
         "(e.g. {maxCredits: 500, expiresAfter: 30d})"),
        ("plans:\n  - {id: free, monthlyCredits: 100, default: true,\n"
         "     rollover: {maxCredits: -1, expiresAfter: 30d}}\n",
         "plan free: rollover.maxCredits must be an integer >= 0, got -1"),
        ("plans:\n  - {id: free, monthlyCredits: 100, default: true,\n"
         "     rollover: {maxCredits: 5, expiresAfter: soon}}\n",
         "plan free: rollover.expiresAfter: 'soon' is not a duration: use e.g. 60s, 5m, 6h, "
         "1h30m or 2d"),
        ("plans:\n  - {id: free, monthlyCredits: 100, default: true,\n"
         "     rollover: {maxCredits: 5, expiresAfter: 0s}}\n",
         "plan free: rollover.expiresAfter must be longer than 0s"),
    ],
)
def test_bad_catalogs_say_what_is_wrong(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "plans.yaml"
    path.write_text(body)
    with pytest.raises(plans.CatalogError) as error:
        plans.load_file(path)
    assert str(error.value).endswith(message)


def test_a_rollover_rule_is_read_stored_and_written_back(
    tmp_path: Path, engine: Engine,
) -> None:
    path = tmp_path / "plans.yaml"
    path.write_text("plans:\n  - {id: free, monthlyCredits: 100, default: true}\n"
                    "  - {id: pro, monthlyCredits: 5000,\n"
                    "     rollover: {maxCredits: 1000, expiresAfter: 30d}}\n")
    cat = plans.load_file(path)
    pro = cat.get("pro")
    assert pro is not None
    assert pro.rollover == plans.Rollover(1000, dt.timedelta(days=30))
    assert plans.plan_to_mapping(pro)["rollover"] == {"maxCredits": 1000,
                                                      "expiresAfter": "30d"}
    with database.write(engine) as conn:
        catalog.replace(conn, cat, T0)
    with database.read(engine) as conn:
        assert catalog.load(conn) == cat


def test_an_invalid_change_writes_nothing(engine: Engine) -> None:
    with database.write(engine) as conn:
        before = catalog.read_plans(conn)
    with pytest.raises(plans.CatalogError, match=r"free, starter are all marked default"), \
            database.write(engine) as conn:
        catalog.upsert(conn, plans.Plan("starter", 1000, default=True), T0)
    with database.read(engine) as conn:
        assert catalog.read_plans(conn) == before


def test_replace_reports_what_changed(engine: Engine) -> None:
    new = plans.Catalog((plans.Plan("free", 200, default=True), plans.Plan("pro", 5000),
                         plans.Plan("team", 9000)))
    with database.write(engine) as conn:
        change = catalog.replace(conn, new, T0)
    assert change == catalog.CatalogChange(("team",), ("free", "pro"), ("scale", "starter"))
    with database.read(engine) as conn:
        assert catalog.load(conn) == new


def test_plans_written_at_once_are_all_kept(engine: Engine) -> None:
    """Two `CreditPlan`s created at the same moment (kopf runs their handlers in threads):
    each write reads the catalog and writes it whole, so without the catalog lock one
    write removed the plan the other had just added (seen in the operator e2e)."""
    with database.write(engine) as conn:
        catalog.seed(conn, None, T0)
    names = [f"p{n}" for n in range(8)]
    start = threading.Barrier(len(names))

    def put(name: str) -> None:
        start.wait()
        catalog.put(engine, plans.Plan(name, 10), T0)

    threads = [threading.Thread(target=put, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(names) <= {plan.id for plan in catalog.current(engine)}
