"""Correlation rules (rules/correlation.toml) and the [correlation] config table, validated.

A pattern's `kind` names the code in correlate.py that implements it; everything else (which
actions, thresholds, windows, severity, title) is data. A file that does not load says which
file and which entry, and why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logly.config import read_toml
from logly.errors import ConfigError
from logly.events import ACTIONS
from logly.tracer.classify import SEVERITY_RANK, shipped_errors_path

TRACE_KEYS = ("ip", "user", "user+ip", "host+program")
# kind -> (trace group it must use or None for any, required parameters)
KINDS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "leaky": ("address", ("capacity", "leak_seconds")),
    "spaced": ("address", ("min_failures", "window_seconds", "min_median_gap")),
    "distinct-users": ("address", ("min_users", "window_seconds")),
    "success-after-failures": ("address", ("min_failures", "window_seconds")),
    "scan-then-login": ("address", ("scan_actions", "login_actions", "window_seconds")),
    "distinct-ports": ("address", ("min_ports", "window_seconds")),
    "recidive": ("address", ("window_seconds",)),
    "canary-user": ("address", ("user_prefixes",)),
    "distinct-ips": ("user-attack", ("on", "min_ips", "window_seconds")),
    "new-address": ("login", ()),
    "each": ("privilege", ("on",)),
    "count": ("privilege", ("on", "min_count", "window_seconds")),
    "uid0": ("account", ("on",)),
    "admin-group": ("account", ("on", "groups")),
    "error-burst": ("errors", ("min_count", "window_seconds")),
    "serious-error": ("errors", ("min_severity",)),
}
ADDRESS_FAILURE_KINDS = ("leaky", "spaced", "distinct-users", "canary-user", "scan-then-login")
# kinds that take `rules = [...]`: count only the events of these parser rules (metadata "rule")
RULE_KINDS = ("leaky",)
_RULE_NAME = re.compile(r"[\w.-]{1,64}/[\w.-]{1,64}")
_FIELD = re.compile(r"\{(\w{1,32})\}")
TITLE_FIELDS = frozenset({"ip", "user", "host", "program", "count", "users", "ips", "ports",
                          "failures", "error_type", "group"})


@dataclass(slots=True)
class TraceGroup:
    name: str
    key: str
    gap_seconds: int
    link_actions: tuple[str, ...]
    link_set: frozenset[str] = frozenset()


@dataclass(slots=True)
class Pattern:
    name: str
    kind: str
    trace: str
    severity: str
    title: str
    on: frozenset[str] = frozenset()
    params: dict[str, Any] = field(default_factory=dict)
    rules: frozenset[str] = frozenset()  # parser rules it counts; empty: any rule

    def render(self, values: dict[str, Any]) -> str:
        return _FIELD.sub(lambda m: str(values.get(m[1]) or "?"), self.title)[:300]


@dataclass
class CorrelationRules:
    traces: dict[str, TraceGroup]
    patterns: dict[str, Pattern]
    failure_actions: tuple[str, ...]
    path: str = ""
    _by_kind: dict[str, list[Pattern]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for p in self.patterns.values():
            self._by_kind.setdefault(p.kind, []).append(p)
        self.address_failure_patterns = [
            p for p in self.patterns.values() if p.kind in ADDRESS_FAILURE_KINDS]
        windows = [int(p.params.get("window_seconds", 0)) for p in self.patterns.values()
                   if p.kind != "recidive"]
        windows += [int(p.params["capacity"] * p.params["leak_seconds"]) * 2
                    for p in self.kind("leaky")]
        windows += [g.gap_seconds for g in self.traces.values()]
        self.max_window = max(windows or [3600])  # how far back a restart replays
        self.long_window = max([int(p.params["window_seconds"]) for p in self.kind("recidive")]
                               or [self.max_window])

    def kind(self, kind: str) -> list[Pattern]:
        return self._by_kind.get(kind, [])


def shipped_correlation_path() -> Path:
    return shipped_errors_path().with_name("correlation.toml")


def load_rules(path: str | Path | None = None) -> CorrelationRules:
    path = Path(path) if path else shipped_correlation_path()
    data = read_toml(path)
    unknown = set(data) - {"trace", "pattern", "failures"}
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}")
    traces: dict[str, TraceGroup] = {}
    for name, t in data.get("trace", {}).items():
        where = f"{path}: [trace.{name}]"
        if t.get("key") not in TRACE_KEYS:
            raise ConfigError(f"{where}: key must be one of {', '.join(TRACE_KEYS)}")
        links = tuple(t.get("link_actions", ()))
        _actions(links, where)
        gap = t.get("gap_seconds", 3600)
        if not isinstance(gap, int) or gap <= 0:
            raise ConfigError(f"{where}: gap_seconds must be a positive integer")
        traces[name] = TraceGroup(name, t["key"], gap, links, frozenset(links))
    for needed in {k[0] for k in KINDS.values() if k[0]}:
        if needed not in traces:
            raise ConfigError(f"{path}: [trace.{needed}] is missing")
    failures = tuple(data.get("failures", {}).get("actions", ()))
    _actions(failures, f"{path}: [failures]")
    patterns: dict[str, Pattern] = {}
    for name, p in data.get("pattern", {}).items():
        patterns[name] = _pattern(name, p, f"{path}: [pattern.{name}]", traces)
    return CorrelationRules(traces, patterns, failures, str(path))


def _actions(actions: tuple[str, ...] | list[str], where: str) -> None:
    bad = [a for a in actions if a not in ACTIONS]
    if bad:
        raise ConfigError(f"{where}: unknown action(s) {', '.join(bad)}")


def _pattern(name: str, p: dict[str, Any], where: str,
             traces: dict[str, TraceGroup]) -> Pattern:
    kind = p.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}")
    group, required = KINDS[kind]
    trace = p.get("trace", group)
    if trace != group:
        raise ConfigError(f"{where}: kind {kind} builds '{group}' traces, not {trace!r}")
    sev = p.get("severity")
    if sev not in SEVERITY_RANK:
        raise ConfigError(f"{where}: severity must be one of {', '.join(SEVERITY_RANK)}")
    title = p.get("title")
    if not isinstance(title, str) or not title:
        raise ConfigError(f"{where}: title is required")
    bad = set(_FIELD.findall(title)) - TITLE_FIELDS
    if bad:
        raise ConfigError(f"{where}: title uses unknown field(s) {', '.join(sorted(bad))}")
    params = {k: v for k, v in p.items() if k not in ("kind", "trace", "severity", "title")}
    missing = [k for k in required if k not in params]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    for k, v in params.items():
        numeric = k.endswith(("_seconds", "_gap")) or (k.startswith("min_")
                                                         and k != "min_severity")
        if numeric and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise ConfigError(f"{where}: {k} must be a positive integer")
    if kind == "leaky" and (not isinstance(params["capacity"], int)
                            or isinstance(params["capacity"], bool) or params["capacity"] < 0):
        raise ConfigError(f"{where}: capacity must be an integer >= 0 (0: every event fires)")
    rules = params.get("rules")
    if rules is not None:
        if kind not in RULE_KINDS:
            raise ConfigError(f"{where}: rules = [...] is for kind {', '.join(RULE_KINDS)} only")
        if (not isinstance(rules, list) or not rules
                or not all(isinstance(r, str) and _RULE_NAME.fullmatch(r) for r in rules)):
            raise ConfigError(f"{where}: rules must be a non-empty list of rule names like "
                              "\"sshd/login-timeout\"")
    for k in ("on", "scan_actions", "login_actions"):
        if k in params:
            _actions(params[k], where)
    if kind == "scan-then-login":
        params["login_set"] = frozenset(params["login_actions"])
    if kind == "canary-user":
        params["user_prefixes"] = tuple(str(x) for x in params["user_prefixes"])
    if kind == "admin-group":
        params["groups"] = frozenset(str(x) for x in params["groups"])
    if "min_severity" in params and params["min_severity"] not in SEVERITY_RANK:
        raise ConfigError(f"{where}: min_severity must be a severity")
    return Pattern(name, kind, trace, sev, title, frozenset(params.get("on", ())), params,
                   frozenset(rules or ()))


# ---- [correlation] config table -------------------------------------------------------------
@dataclass
class CorrelationSettings:
    enabled: bool = True
    classify: bool = True
    rules: Path | None = None  # correlation.toml to use instead of the shipped one
    errors: Path | None = None  # errors.toml to use instead of the shipped one


def settings(section: dict[str, Any]) -> CorrelationSettings:
    """Validate the [correlation] table of logly.toml."""
    known = {"enabled": bool, "classify": bool, "rules": str, "errors": str}
    out = CorrelationSettings()
    for key, value in section.items():
        if key not in known:
            raise ConfigError(f"[correlation]: unknown key '{key}'",
                              hint=f"known keys: {', '.join(known)}")
        if not isinstance(value, known[key]):
            raise ConfigError(f"[correlation]: '{key}' must be {known[key].__name__}")
        if known[key] is str:
            p = Path(value)
            if not p.is_file():
                raise ConfigError(f"[correlation]: {key} file not found: {p}")
            setattr(out, key, p)
        else:
            setattr(out, key, value)
    return out
