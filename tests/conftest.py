from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from logly.parsers.header import HeaderParser
from logly.parsers.line import LineParser
from logly.parsers.rules import RuleSet
from logly.store.sqlite import SQLiteStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def rules() -> RuleSet:
    return RuleSet.load()


@pytest.fixture
def parser(rules: RuleSet) -> LineParser:
    return LineParser(rules, HeaderParser(tz=UTC, reference=datetime(2026, 11, 25, tzinfo=UTC)))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "logly.db"


@pytest.fixture
def store(db_path: Path) -> SQLiteStore:
    s = SQLiteStore(db_path)
    s.init()
    yield s
    s.close()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., CliResult]:
    """Run `logly ARGS` in-process with its own stdout/stderr and stdin."""
    from logly.cli import main

    cfg = tmp_path / "logly.toml"
    cfg.write_text("")
    monkeypatch.setenv("LOGLY_CONFIG", str(cfg))
    monkeypatch.delenv("LOGLY_DB", raising=False)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str, stdin: bytes = b"") -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        fake_in = io.TextIOWrapper(io.BytesIO(stdin))
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        monkeypatch.setattr(sys, "stdin", fake_in)
        try:
            code = main(list(args))
        finally:
            monkeypatch.setattr(sys, "stdout", sys.__stdout__)
            monkeypatch.setattr(sys, "stderr", sys.__stderr__)
        return CliResult(int(code), out.getvalue(), err.getvalue())

    return run
