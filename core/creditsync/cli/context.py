"""What every command needs: the settings and the `Factory` built from them; error reporting."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import click
from sqlalchemy.engine import Engine

from creditsync import config, errors, factory


@dataclass
class Context:
    settings: config.Settings

    @cached_property
    def factory(self) -> factory.Factory:
        return factory.Factory(self.settings)

    @property
    def engine(self) -> Engine:
        return self.factory.engine

    def use_settings(self, settings: config.Settings) -> None:
        """Serve with other settings (e.g. `--dev` keys); the engine stays."""
        self.settings = settings
        self.factory.settings = settings

    def require_schema(self) -> None:
        try:
            self.factory.require_schema()
        except errors.SchemaOutdated as exc:
            raise click.ClickException(str(exc)) from exc


pass_context = click.make_pass_decorator(Context)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
