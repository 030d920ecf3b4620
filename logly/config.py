"""Configuration: defaults, then /etc/logly/logly.toml (or --config), then LOGLY_* variables,
then command-line flags. A bad file fails at start naming the key and the reason."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from logly import configread
from logly.configread import read_config, read_toml, shipped_rules_path, zone

__all__ = ["DEFAULT_CONFIG", "DEFAULT_RULES_D", "DEFAULT_SOURCES", "SOURCE_TYPES", "Config",
           "DaemonConfig", "SourceSpec", "default_db_path", "load_config", "read_toml",
           "shipped_rules_dir"]

# The file is read and checked in logly/configread.py, which `logly ip` uses alone (a new
# process must answer in milliseconds: no dataclasses or pathlib there); this module turns
# its answer into the Config the rest of Logly passes around.
_DAEMON = configread.DAEMON_DEFAULTS

DEFAULT_CONFIG = Path(configread.DEFAULT_CONFIG)
DEFAULT_RULES_D = Path(configread.DEFAULT_RULES_D)
SOURCE_TYPES = configread.SOURCE_TYPES
DEFAULT_SOURCES = configread.DEFAULT_SOURCES


def shipped_rules_dir() -> Path:
    """The rules/ shipped with Logly: inside the package when installed, else the repo's."""
    return Path(shipped_rules_path())


def default_db_path(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    return Path(configread.default_db_text(env))


@dataclass
class SourceSpec:
    """A file or glob to follow; `type` is a hint (the format is detected per line)."""

    path: str
    type: str = "auto"
    match: list[str] | None = None  # journal: FIELD=VALUE filters (OR), default auth-relevant
    directory: str | None = None  # journal: read this directory instead of the system journal

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        """`PATH[:TYPE]` as given to `--follow`; `journal` follows the system journal."""
        if text == "journal":
            return cls("journal", "journal")
        path, sep, kind = text.rpartition(":")
        if sep and kind in SOURCE_TYPES and path:
            return cls(path, kind)
        return cls(text)

    def journal_query(self):  # type: ignore[no-untyped-def]
        from logly.sources.journal import DEFAULT_MATCHES, JournalQuery

        return JournalQuery(matches=list(self.match or DEFAULT_MATCHES),
                            directory=self.directory)


@dataclass
class DaemonConfig:  # defaults and meaning: logly/configread.py DAEMON_DEFAULTS
    batch_lines: int = int(_DAEMON["batch_lines"])
    batch_seconds: float = _DAEMON["batch_seconds"]
    poll_seconds: float = _DAEMON["poll_seconds"]
    glob_seconds: float = _DAEMON["glob_seconds"]
    status_seconds: float = _DAEMON["status_seconds"]


@dataclass
class Config:
    db: Path
    rules_dirs: list[Path] = field(default_factory=list)
    timezone: str | None = None  # zone of log times that carry none; None = this machine's
    batch_lines: int = configread.BATCH_LINES
    batch_seconds: float = configread.BATCH_SECONDS
    source: Path | None = None  # the file this came from, if any
    sources: list[SourceSpec] = field(
        default_factory=lambda: [SourceSpec(p) for p in DEFAULT_SOURCES])
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    # the tables later stages own ([tracer], [reputation], [scheduler], ...), as written; each
    # stage validates its own table, so this module does not grow with every feature
    sections: dict[str, dict] = field(default_factory=dict)

    def tzinfo(self):  # type: ignore[no-untyped-def]
        return zone(self.timezone)


def load_config(
    path: str | Path | None = None,
    env: dict[str, str] | os._Environ[str] = os.environ,
    *,
    check_stages: bool = True,
) -> Config:
    """The config in force (logly/configread.py reads and checks it). `check_stages=False`
    skips validating the [scheduler], [retention], [report] and [smtp] tables (it loads the
    scheduler and the store): for a read-only command that uses none of them."""
    raw = read_config(path, env)
    cfg = Config(db=Path(raw.db), rules_dirs=[Path(d) for d in raw.rules_dirs],
                 timezone=raw.timezone, batch_lines=raw.batch_lines,
                 batch_seconds=raw.batch_seconds,
                 source=None if raw.source is None else Path(raw.source),
                 daemon=DaemonConfig(**raw.daemon), sections=raw.sections)  # type: ignore[arg-type]
    if raw.sources is not None:
        cfg.sources = [SourceSpec(p, kind, match, directory)
                       for p, kind, match, directory in raw.sources]
    if not check_stages:
        return cfg
    from logly.scheduler import settings  # late: the scheduler imports this module

    settings(cfg)  # a bad [scheduler]/[retention]/[report]/[smtp] fails at load, not at 3 am
    return cfg
