"""Error classification: error lines of any program -> type, category, severity, hints.

The classes are data (rules/errors.toml). Per row the cost is: is the action one that can
carry an error (parsed security events such as auth_failure cannot), a dict lookup on the
program, and a few substring tests of keywords; only a row that contains a keyword runs the
anchored, bounded regex of its class. Results go to `error_traces` inside the batch's
transaction and are handed to correlation (error bursts) through `last_errors`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logly.config import read_toml
from logly.errors import ConfigError
from logly.rows import ACTION, MESSAGE, PROGRAM, TIMESTAMP

SEVERITIES: tuple[str, ...] = ("info", "low", "medium", "high", "critical")
SEVERITY_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}
CATEGORIES: frozenset[str] = frozenset({
    "authentication", "configuration", "resource exhaustion", "network", "permission",
    "hardware/disk", "crash/OOM", "security policy",
})
# Parsed security events are the correlator's business, never an error class: skipping them
# first keeps the classifier off the bulk of an attacked host's auth.log.
CLASSIFIED_ACTIONS: frozenset[str] = frozenset({"info", "error", "scan", "disconnect"})

# a regex that may backtrack without bound: *, + or {n,} outside a character class
_UNBOUNDED = re.compile(r"(?<!\\)(?:\*|\+|\{\d+,\})")
_CLASS = re.compile(r"\[(?:\\.|[^\]\\])*\]")
_PLACEHOLDER = re.compile(r"\{(\w{1,32})\}")
MAX_TEXT = 1000  # hints/suggestions after substitution; captured values are cut to 255


def shipped_errors_path() -> Path:
    here = Path(__file__).resolve().parent.parent
    for cand in (here.parent / "rules" / "errors.toml", here / "rules" / "errors.toml"):
        if cand.is_file():
            return cand
    raise ConfigError("rules/errors.toml not found next to the package")


def check_bounded(pattern: str) -> str | None:
    """Why a pattern is not safe on hostile text, or None if it is anchored and bounded."""
    if not pattern.startswith("^"):
        return "must start with ^ (anchored)"
    if _UNBOUNDED.search(_CLASS.sub("", pattern)):
        return "uses an unbounded repeat (*, + or {n,}); bound it, e.g. .{0,200}?"
    return None


@dataclass(slots=True)
class ErrorClass:
    name: str
    programs: tuple[str, ...]
    keywords: tuple[str, ...]
    regex: re.Pattern[str]
    extract: re.Pattern[str] | None
    type: str
    category: str
    severity: str
    hints: str
    suggestions: str
    samples: list[str] = field(default_factory=list)
    not_samples: list[str] = field(default_factory=list)
    remote_text: bool = False  # safe on lines of programs that embed remote-chosen text


@dataclass(slots=True)
class Classified:
    """One classified row; `index` is its position in the batch."""

    index: int
    cls: ErrorClass
    file: str | None
    line_no: int | None
    code: str | None
    hints: str
    suggestions: str
    unit: str | None = None  # the systemd unit the message is about, if it names one


def _fill(template: str, values: dict[str, str]) -> str:
    # plain substitution (no str.format: no attribute access, no format specs)
    out = _PLACEHOLDER.sub(lambda m: values.get(m[1]) or "", template)
    return out[:MAX_TEXT]


class Classifier:
    def __init__(self, classes: list[ErrorClass],
                 remote_text_programs: tuple[str, ...] = ()) -> None:
        self.classes = classes
        generic = [c for c in classes if not c.programs]
        by_program: dict[str, list[ErrorClass]] = {p: [] for p in remote_text_programs}
        for c in classes:
            for p in c.programs:
                by_program.setdefault(p, []).append(c)
        # program-specific classes first (a systemd "Failed to execute ...: Permission denied"
        # is a unit failure before it is a generic permission error), then the generic ones;
        # programs that write remote-chosen text get only generic classes marked safe for it
        self._generic = self._flatten(generic)
        self._by_program = {
            p: self._flatten(cs + [g for g in generic
                                   if p not in remote_text_programs or g.remote_text])
            for p, cs in by_program.items()}

    @staticmethod
    def _flatten(classes: list[ErrorClass]) -> tuple[tuple[str, ErrorClass], ...]:
        return tuple((kw, c) for c in classes for kw in c.keywords)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Classifier:
        path = path or shipped_errors_path()
        return cls(load_classes(path), remote_text_programs(path))

    def classify(self, program: str | None, message: str) -> Classified | None:
        cands = self._by_program.get(program, self._generic) if program else self._generic
        for kw, c in cands:
            if kw not in message:
                continue
            m = c.regex.match(message)  # a class with two keywords present runs twice: rare
            if m is None:
                continue
            values = {k: v[:255] for k, v in m.groupdict().items() if v}
            if c.extract is not None and "file" not in values:
                x = c.extract.search(message, 0, 4096)
                if x:
                    values.update({k: v[:255] for k, v in x.groupdict().items() if v})
            line = values.get("line")
            return Classified(
                -1, c, values.get("file") or values.get("file2"),
                int(line) if line and line.isdigit() else None, values.get("code"),
                _fill(c.hints, values), _fill(c.suggestions, values),
                values.get("unit") or values.get("unit2"),
            )
        return None

    def classify_rows(self, rows: Sequence[tuple]) -> list[Classified]:
        """Rows in EVENT_INSERT_COLUMNS order (logly/rows.py)."""
        out: list[Classified] = []
        actions = CLASSIFIED_ACTIONS
        classify = self.classify
        for i, row in enumerate(rows):
            if row[ACTION] not in actions:
                continue
            hit = classify(row[PROGRAM], row[MESSAGE])
            if hit is not None:
                hit.index = i
                out.append(hit)
        return out


def remote_text_programs(path: str | Path) -> tuple[str, ...]:
    value = read_toml(Path(path)).get("remote_text_programs", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: remote_text_programs must be a list of program names")
    return tuple(value)


def load_classes(path: str | Path) -> list[ErrorClass]:
    path = Path(path)
    data = read_toml(path)
    unknown = set(data) - {"error", "remote_text_programs"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    entries = data.get("error")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: no [[error]] entries")
    out: list[ErrorClass] = []
    seen: set[str] = set()
    for n, e in enumerate(entries, 1):
        where = f"{path}: [[error]] #{n} ({e.get('name', '?')})"
        try:
            out.append(_one(e, where))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{where}: missing or wrong key {exc}") from None
        if out[-1].name in seen:
            raise ConfigError(f"{where}: duplicate name")
        seen.add(out[-1].name)
    return out


def _one(e: dict[str, Any], where: str) -> ErrorClass:
    unknown = set(e) - {"name", "programs", "keywords", "match", "extract", "type", "category",
                        "severity", "hints", "suggestions", "samples", "not_samples",
                        "remote_text"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    why = check_bounded(e["match"])
    if why:
        raise ConfigError(f"{where}: match {why}")
    if e["category"] not in CATEGORIES:
        raise ConfigError(f"{where}: category must be one of {', '.join(sorted(CATEGORIES))}")
    if e["severity"] not in SEVERITY_RANK:
        raise ConfigError(f"{where}: severity must be one of {', '.join(SEVERITIES)}")
    keywords = tuple(str(k) for k in e["keywords"])
    if not keywords or not all(keywords):
        raise ConfigError(f"{where}: keywords must be a non-empty list of strings")
    try:
        regex = re.compile(e["match"])
        extract = None
        if e.get("extract"):
            if _UNBOUNDED.search(_CLASS.sub("", e["extract"])):
                raise ConfigError(f"{where}: extract uses an unbounded repeat")
            extract = re.compile(e["extract"])
    except re.error as exc:
        raise ConfigError(f"{where}: bad regex: {exc}") from None
    return ErrorClass(
        name=str(e["name"]), programs=tuple(e.get("programs", ())), keywords=keywords,
        regex=regex, extract=extract, type=str(e["type"]), category=e["category"],
        severity=e["severity"], hints=str(e.get("hints", "")),
        suggestions=str(e.get("suggestions", "")), samples=list(e.get("samples", [])),
        not_samples=list(e.get("not_samples", [])), remote_text=bool(e.get("remote_text")),
    )


_INSERT = (
    "INSERT INTO error_traces (event_id, timestamp, error_type, category, severity, file, "
    "line_no, code, hints, suggestions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def store_classified(conn: Any, rows: Sequence[tuple], first_id: int,
                     hits: list[Classified]) -> None:
    if hits:
        conn.exec_driver_sql(_INSERT, [
            (first_id + h.index, rows[h.index][TIMESTAMP], h.cls.type, h.cls.category,
             h.cls.severity, h.file, h.line_no, h.code, h.hints, h.suggestions) for h in hits
        ])
