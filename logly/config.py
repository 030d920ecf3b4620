"""Configuration: defaults, then /etc/logly/logly.toml (or --config), then LOGLY_* variables,
then command-line flags. A bad file fails at start naming the key and the reason."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logly.errors import ConfigError

# Only the standard library and logly.errors here: `logly ip` reads the config in a process
# that must answer in milliseconds (see logly/cli_entry.py).

DEFAULT_CONFIG = Path("/etc/logly/logly.toml")
DEFAULT_RULES_D = Path("/etc/logly/rules.d")


def shipped_rules_dir() -> Path:
    """The rules/ shipped with Logly: inside the package when installed, else the repo's."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "rules", here.parent / "rules"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("shipped rules/ directory not found")


def default_db_path(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/logly/logly.db")
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "logly" / "logly.db"


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


SOURCE_TYPES = ("auto", "syslog", "auth", "fail2ban", "ndjson", "journal")
DEFAULT_SOURCES = ("/var/log/auth.log", "/var/log/fail2ban.log")


@dataclass
class DaemonConfig:
    batch_lines: int = 5000
    batch_seconds: float = 0.1  # a line waits at most this long before it is stored
    poll_seconds: float = 0.25  # timer for files where inotify says nothing
    glob_seconds: float = 2.0  # how often globs are expanded again for new files
    status_seconds: float = 5.0


@dataclass
class Config:
    db: Path
    rules_dirs: list[Path] = field(default_factory=list)
    timezone: str | None = None  # zone of log times that carry none; None = this machine's
    batch_lines: int = 20_000
    batch_seconds: float = 1.0
    source: Path | None = None  # the file this came from, if any
    sources: list[SourceSpec] = field(
        default_factory=lambda: [SourceSpec(p) for p in DEFAULT_SOURCES])
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    # the tables later stages own ([tracer], [reputation], [scheduler], ...), as written; each
    # stage validates its own table, so this module does not grow with every feature
    sections: dict[str, dict] = field(default_factory=dict)

    def tzinfo(self):  # type: ignore[no-untyped-def]
        if not self.timezone:
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"timezone: unknown zone {self.timezone!r}",
                              hint="use an IANA name such as Europe/Zurich or UTC") from None


def _expect(data: dict, key: str, kind: type | tuple[type, ...], where: Path) -> object:
    value = data[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}: key '{key}' must be {names}, not {type(value).__name__}")
    return value


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file (the config, rule data), or a ConfigError naming the file and the problem."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"{path}: cannot read: {why}") from None


def load_config(
    path: str | Path | None = None,
    env: dict[str, str] | os._Environ[str] = os.environ,
    *,
    check_stages: bool = True,
) -> Config:
    """The config in force. `check_stages=False` skips validating the [scheduler],
    [retention], [report] and [smtp] tables (it loads the scheduler and the store): for a
    read-only command that uses none of them, such as `logly ip`."""
    explicit = path or env.get("LOGLY_CONFIG")
    cfg_path = Path(explicit) if explicit else DEFAULT_CONFIG
    data: dict = {}
    if cfg_path.exists():
        data = read_toml(cfg_path)
    elif explicit:
        raise ConfigError(f"config file not found: {cfg_path}")

    cfg = Config(db=default_db_path(env), source=cfg_path if data else None)
    known = {"database", "timezone", "rules", "ingest", "daemon", "source", "tracer",
             "reputation", "correlation", "retention", "report", "scheduler", "smtp"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{cfg_path}: unknown key '{key}'",
                              hint=f"known keys: {', '.join(sorted(known))}")
    for key in ("tracer", "reputation", "correlation", "retention", "report", "scheduler",
                "smtp"):
        if key in data:
            if not isinstance(data[key], dict):
                raise ConfigError(f"{cfg_path}: '{key}' must be a table")
            cfg.sections[key] = data[key]
    if "database" in data:
        cfg.db = Path(str(_expect(data, "database", str, cfg_path)))
    if "timezone" in data:
        cfg.timezone = str(_expect(data, "timezone", str, cfg_path))
    rules = data.get("rules", {})
    extra_dirs = [DEFAULT_RULES_D]
    if rules:
        if not isinstance(rules, dict):
            raise ConfigError(f"{cfg_path}: 'rules' must be a table")
        if "dirs" in rules:
            dirs = _expect(rules, "dirs", list, cfg_path)
            extra_dirs = [Path(str(d)) for d in dirs]  # type: ignore[union-attr]
    ingest = data.get("ingest", {})
    if ingest:
        if "batch_lines" in ingest:
            cfg.batch_lines = int(_expect(ingest, "batch_lines", int, cfg_path))  # type: ignore[arg-type]
        if "batch_seconds" in ingest:
            cfg.batch_seconds = float(
                _expect(ingest, "batch_seconds", (int, float), cfg_path))  # type: ignore[arg-type]

    sources = data.get("source")
    if sources is not None:
        if not isinstance(sources, list):
            raise ConfigError(f"{cfg_path}: 'source' must be an array of tables ([[source]])")
        cfg.sources = []
        for i, src in enumerate(sources):
            where = f"{cfg_path}: source[{i}]"
            if not isinstance(src, dict):
                raise ConfigError(f"{where}: must be a table")
            kind = src.get("type", "auto")
            if kind not in SOURCE_TYPES:
                raise ConfigError(f"{where}: type {kind!r} is not one of {', '.join(SOURCE_TYPES)}")
            match = src.get("match")
            if match is not None and (not isinstance(match, list) or not all(
                    isinstance(m, str) and "=" in m for m in match)):
                raise ConfigError(f"{where}: match must be a list of \"FIELD=VALUE\" strings")
            if kind == "journal":
                cfg.sources.append(SourceSpec("journal", "journal", match,
                                              src.get("directory")))
            elif not isinstance(src.get("path"), str):
                raise ConfigError(f"{where}: needs path = \"/var/log/...\"")
            else:
                cfg.sources.append(SourceSpec(src["path"], kind))
    daemon = data.get("daemon", {})
    if daemon:
        if not isinstance(daemon, dict):
            raise ConfigError(f"{cfg_path}: 'daemon' must be a table")
        for key, value in daemon.items():
            if not hasattr(cfg.daemon, key):
                raise ConfigError(f"{cfg_path}: unknown key 'daemon.{key}'")
            want = type(getattr(cfg.daemon, key))
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{cfg_path}: 'daemon.{key}' must be a positive number")
            setattr(cfg.daemon, key, want(value))
    if env.get("LOGLY_DB"):
        cfg.db = Path(env["LOGLY_DB"])
    if env.get("LOGLY_TIMEZONE"):
        cfg.timezone = env["LOGLY_TIMEZONE"]
    if env.get("LOGLY_RULES_DIRS"):
        extra_dirs = [Path(p) for p in env["LOGLY_RULES_DIRS"].split(":") if p]
    cfg.rules_dirs = [shipped_rules_dir(), *extra_dirs]
    cfg.tzinfo()  # validate now, not at the first line
    if not check_stages:
        return cfg
    from logly.scheduler import settings  # late: the scheduler imports this module

    settings(cfg)  # a bad [scheduler]/[retention]/[report]/[smtp] fails at load, not at 3 am
    return cfg
