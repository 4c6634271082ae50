"""The chart's values documentation: `# --` comments in values.yaml → README.md's table.

A `# --` comment (continued by the `#` lines right below it) documents the key under it and
everything inside that key. Every value must be documented that way; the table in
charts/creditsync/README.md, between the `values:start` and `values:end` markers, is made
from the comments. Regenerate it with:

    .venv/bin/python -m tests.chart.valuesdoc --write
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "creditsync"
VALUES = CHART / "values.yaml"
README = CHART / "README.md"
START, END = "<!-- values:start -->", "<!-- values:end -->"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_]+):(?:\s|$)")
_DOC = re.compile(r"^(?P<indent> *)# -- ?(?P<text>.*)$")
_MORE = re.compile(r"^(?P<indent> *)# ?(?P<text>.*)$")


@dataclass(frozen=True)
class Doc:
    path: str  # dotted, e.g. `secrets.databaseUrl.value`
    text: str


def documented(text: str) -> list[Doc]:
    """The documented keys of a values file, in file order."""
    found: list[Doc] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    pending_indent = -1
    for line in text.splitlines():
        if (doc := _DOC.match(line)) is not None:
            pending, pending_indent = [doc["text"].strip()], len(doc["indent"])
            continue
        more = _MORE.match(line)
        if pending is not None and more is not None and len(more["indent"]) == pending_indent:
            pending.append(more["text"].strip())
            continue
        key = _KEY.match(line)
        if key is None:
            pending = None
            continue
        indent = len(key["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key["key"]))
        if pending is not None and pending_indent == indent:
            found.append(Doc(".".join(k for _, k in stack), " ".join(pending)))
        pending = None
    return found


def leaves(values: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every value that is not a non-empty mapping."""
    if isinstance(values, dict) and values:
        for key, value in values.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


def lookup(values: Any, path: str) -> Any:
    for key in path.split("."):
        values = values[key]
    return values


def undocumented(text: str) -> list[str]:
    """Values without a `# --` comment on themselves or on a key around them."""
    docs = {d.path for d in documented(text)}
    return [leaf for leaf in leaves(yaml.safe_load(text))
            if not any(leaf == d or leaf.startswith(d + ".") for d in docs)]


def _type(value: Any) -> str:
    for kind, name in ((bool, "bool"), (int, "int"), (str, "string"), (list, "list"),
                       (dict, "object")):
        if isinstance(value, kind):
            return name
    return "null"


def table(text: str) -> str:
    """The values table in Markdown."""
    values = yaml.safe_load(text)
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for doc in documented(text):
        value = lookup(values, doc.path)
        default = json.dumps(value, separators=(", ", ": ")).replace("|", "\\|")
        description = doc.text.replace("|", "\\|")
        rows.append(f"| `{doc.path}` | {_type(value)} | `{default}` | {description} |")
    return "\n".join(rows) + "\n"


def readme_with_table(readme: str, values_text: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table(values_text)}{END}{tail}"


def main(argv: list[str]) -> int:
    text = VALUES.read_text()
    if missing := undocumented(text):
        print("undocumented values: " + ", ".join(missing), file=sys.stderr)
        return 1
    if argv[1:] == ["--write"]:
        README.write_text(readme_with_table(README.read_text(), text))
    else:
        print(table(text), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
