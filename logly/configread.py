"""The config file and LOGLY_* variables read and checked into plain values: the one place
logly.toml is interpreted. logly/config.py builds its `Config` from `read_config`'s answer;
`logly ip` (logly/cli_ip.py) uses that answer as it is.

`logly ip` must answer in milliseconds in a new process, so this module imports `os` and
logly.errors only: no dataclasses (inspect, ast... ~7 ms), no pathlib, no typing, and
tomllib (~4 ms) only when there is a file to read. Paths are text, spelled as `str(Path(x))`
would spell them, so wrapping them in Path changes nothing.
"""

from __future__ import annotations

import os

from logly.errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

DEFAULT_CONFIG = "/etc/logly/logly.toml"
DEFAULT_RULES_D = "/etc/logly/rules.d"
SOURCE_TYPES = ("auto", "syslog", "auth", "fail2ban", "ndjson", "journal")
DEFAULT_SOURCES = ("/var/log/auth.log", "/var/log/fail2ban.log")
DAEMON_DEFAULTS: dict[str, int | float] = {
    "batch_lines": 5000,
    "batch_seconds": 0.1,  # a line waits at most this long before it is stored
    "poll_seconds": 0.25,  # timer for files where inotify says nothing
    "glob_seconds": 2.0,  # how often globs are expanded again for new files
    "status_seconds": 5.0,
}
BATCH_LINES = 20_000
BATCH_SECONDS = 1.0
KNOWN = frozenset({"database", "timezone", "rules", "ingest", "daemon", "source", "tracer",
                   "reputation", "correlation", "retention", "report", "scheduler", "smtp"})
# the tables later stages own, kept as written: each stage validates its own
SECTIONS = ("tracer", "reputation", "correlation", "retention", "report", "scheduler", "smtp")


def path_text(path: str | os.PathLike[str]) -> str:
    """`str(pathlib.Path(path))` without pathlib: '.' parts, repeated and trailing slashes go."""
    s = os.fspath(path)
    root = "//" if s[:2] == "//" and s[2:3] != "/" else "/" if s[:1] == "/" else ""
    return root + "/".join(p for p in s.split("/") if p and p != ".") or "."


def shipped_rules_path() -> str:
    """The rules/ shipped with Logly: inside the package when installed, else the repo's."""
    here = os.path.dirname(os.path.realpath(__file__))
    for candidate in (os.path.join(here, "rules"), os.path.join(os.path.dirname(here), "rules")):
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError("shipped rules/ directory not found")


def default_db_text(env: Mapping[str, str] = os.environ) -> str:
    if os.geteuid() == 0:
        return "/var/lib/logly/logly.db"
    base = env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return path_text(os.path.join(base, "logly", "logly.db"))


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A TOML file (the config, rule data), or a ConfigError naming the file and the problem."""
    import tomllib

    try:
        with open(path, encoding="utf-8") as f:
            return tomllib.loads(f.read())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"{path}: cannot read: {why}") from None


def zone(name: str | None):  # type: ignore[no-untyped-def]
    """The ZoneInfo called `name` (None for none), or a ConfigError."""
    if not name:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"timezone: unknown zone {name!r}",
                          hint="use an IANA name such as Europe/Zurich or UTC") from None


def _expect(data: dict, key: str, kind: type | tuple[type, ...], where: object) -> object:
    value = data[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}: key '{key}' must be {names}, not {type(value).__name__}")
    return value


class RawConfig:
    """The config in force as plain values: paths are text, `sources` is None for the
    defaults or (path, type, match, directory) tuples, `daemon` holds the keys the file sets.
    What `logly ip` reads (db, rules_dirs, sections) is named as on `Config`."""

    __slots__ = ("db", "rules_dirs", "timezone", "batch_lines", "batch_seconds", "source",
                 "sources", "daemon", "sections")

    def __init__(self, db: str) -> None:
        self.db = db
        self.rules_dirs: list[str] = []
        self.timezone: str | None = None
        self.batch_lines = BATCH_LINES
        self.batch_seconds = BATCH_SECONDS
        self.source: str | None = None  # the file this came from, if any
        self.sources: list[tuple[str, str, list[str] | None, str | None]] | None = None
        self.daemon: dict[str, int | float] = {}
        self.sections: dict[str, dict] = {}


def read_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] = os.environ) -> RawConfig:
    """Defaults, then the file (`path`, else $LOGLY_CONFIG, else DEFAULT_CONFIG, which may be
    absent), then LOGLY_* variables; ConfigError names the file, the key and the reason."""
    explicit = path or env.get("LOGLY_CONFIG")
    cfg_path = path_text(explicit) if explicit else DEFAULT_CONFIG
    data: dict = {}
    if os.path.exists(cfg_path):
        data = read_toml(cfg_path)
    elif explicit:
        raise ConfigError(f"config file not found: {cfg_path}")

    cfg = RawConfig(default_db_text(env))
    cfg.source = cfg_path if data else None
    for key in data:
        if key not in KNOWN:
            raise ConfigError(f"{cfg_path}: unknown key '{key}'",
                              hint=f"known keys: {', '.join(sorted(KNOWN))}")
    for key in SECTIONS:
        if key in data:
            if not isinstance(data[key], dict):
                raise ConfigError(f"{cfg_path}: '{key}' must be a table")
            cfg.sections[key] = data[key]
    if "database" in data:
        cfg.db = path_text(str(_expect(data, "database", str, cfg_path)))
    if "timezone" in data:
        cfg.timezone = str(_expect(data, "timezone", str, cfg_path))
    rules = data.get("rules", {})
    extra_dirs = [DEFAULT_RULES_D]
    if rules:
        if not isinstance(rules, dict):
            raise ConfigError(f"{cfg_path}: 'rules' must be a table")
        if "dirs" in rules:
            dirs = _expect(rules, "dirs", list, cfg_path)
            extra_dirs = [path_text(str(d)) for d in dirs]  # type: ignore[union-attr]
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
                cfg.sources.append(("journal", "journal", match, src.get("directory")))
            elif not isinstance(src.get("path"), str):
                raise ConfigError(f"{where}: needs path = \"/var/log/...\"")
            else:
                cfg.sources.append((src["path"], kind, None, None))
    daemon = data.get("daemon", {})
    if daemon:
        if not isinstance(daemon, dict):
            raise ConfigError(f"{cfg_path}: 'daemon' must be a table")
        for key, value in daemon.items():
            if key not in DAEMON_DEFAULTS:
                raise ConfigError(f"{cfg_path}: unknown key 'daemon.{key}'")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{cfg_path}: 'daemon.{key}' must be a positive number")
            cfg.daemon[key] = type(DAEMON_DEFAULTS[key])(value)
    if env.get("LOGLY_DB"):
        cfg.db = path_text(env["LOGLY_DB"])
    if env.get("LOGLY_TIMEZONE"):
        cfg.timezone = env["LOGLY_TIMEZONE"]
    if env.get("LOGLY_RULES_DIRS"):
        extra_dirs = [path_text(p) for p in env["LOGLY_RULES_DIRS"].split(":") if p]
    cfg.rules_dirs = [shipped_rules_path(), *extra_dirs]
    zone(cfg.timezone)  # validate now, not at the first line
    return cfg
