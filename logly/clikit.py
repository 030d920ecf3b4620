"""What every command shares: the context object, common options, safe table cells.

Feature modules (`logly/cli_*.py`) build their commands from these and register them on the
app in `logly/cli.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from logly.config import Config, load_config
from logly.errors import LoglyError
from logly.parsers.rules import RuleError, RuleSet
from logly.plaintext import json_line, safe_text, when
from logly.store.sqlite import SQLiteStore

__all__ = ["ConfigOpt", "Context", "DbOpt", "JsonOpt", "cell", "make_context", "table", "when"]


@dataclass
class Context:
    """Streams and configuration for one invocation; tests swap the streams."""

    config: Config
    out: Console
    err: Console

    def store(self, *, must_exist: bool = True) -> SQLiteStore:
        store = SQLiteStore(self.config.db)
        if must_exist:
            store.require_schema()
        return store

    def rules(self) -> RuleSet:
        try:
            return RuleSet.load(self.config.rules_dirs)
        except RuleError as exc:
            raise LoglyError(f"rule file does not load: {exc}") from None

    def print_json(self, data: Any) -> None:
        self.out.file.write(json_line(data))


DbOpt = Annotated[
    Path | None,
    typer.Option("--db", help="Database file (env LOGLY_DB).", show_default=False),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Config file (default /etc/logly/logly.toml).",
                 show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def make_context(db: Path | None, config: Path | None) -> Context:
    cfg = load_config(config)
    if db is not None:
        cfg.db = db
    out = Console(highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(highlight=False, width=160)  # piped: do not squeeze into 80 columns
    return Context(cfg, out, Console(stderr=True, highlight=False))


def table(*headers: str, title: str | None = None) -> Table:
    """Short fields never wrap; the last column (a message) folds."""
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        last = i == len(headers) - 1
        table.add_column(h, no_wrap=not last, overflow="fold" if last else "ellipsis")
    return table


def cell(value: Any) -> Text:
    return Text("" if value is None else safe_text(str(value)))


# short names used by the command modules
_ctx, _cell, _table = make_context, cell, table
