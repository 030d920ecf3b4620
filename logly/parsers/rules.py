"""Rule files: which messages of which programs become which action, as data.

A rule file reads top to bottom for an admin, like a CrowdSec parser: the programs it applies
to (a cheap filter), then one section per rule with its action and its patterns:

    # sshd: OpenSSH server
    programs = sshd, sshd-session
    service = ssh

    [invalid-user]
    action = invalid_user
    level = warning
    match = Invalid user <user> from <ip>[ port <port>]
    set.method = none          # a constant added to the event's metadata

`programs = *` applies a file to every program (PAM modules log under their caller's name).
The rule's name is `<file stem>/<section>`, so the path says what an item is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from logly.config import shipped_rules_dir
from logly.events import ACTIONS, LEVELS
from logly.parsers.patterns import Compiled, PatternError, compile_pattern

KEY_LEN = 4  # messages are bucketed on their first characters, so few regexes run per line
_KV = re.compile(r"^(?P<key>[A-Za-z_][\w.-]*)\s*=\s*(?P<value>.*?)\s*$")
_SECTION = re.compile(r"^\[(?P<name>[A-Za-z0-9_.-]+)\]\s*$")


class RuleError(ValueError):
    """A rule file that does not load: which file, which line, why."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path, self.line, self.reason = path, line, reason


@dataclass
class Rule:
    name: str
    action: str
    level: str
    service: str | None
    patterns: list[Compiled] = field(default_factory=list)
    constants: dict[str, str] = field(default_factory=dict)
    file: str = ""
    line: int = 0


@dataclass
class RuleFile:
    path: str
    programs: list[str]
    service: str | None
    rules: list[Rule]


def _strip_comment(line: str) -> str:
    # '#' starts a comment only at line start or after whitespace, so patterns may hold '#'
    m = re.search(r"(^|\s)#", line)
    return line[: m.start()] if m else line


def load_file(path: str | Path) -> RuleFile:
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(path, 0, f"cannot read: {exc}") from None
    stem = Path(path).stem
    programs: list[str] = []
    service: str | None = None
    rules: list[Rule] = []
    current: Rule | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        if m := _SECTION.match(line):
            current = Rule(f"{stem}/{m['name']}", "", "info", service, file=path, line=lineno)
            if any(r.name == current.name for r in rules):
                raise RuleError(path, lineno, f"duplicate rule [{m['name']}]")
            rules.append(current)
            continue
        m = _KV.match(line)
        if not m:
            raise RuleError(path, lineno, "expected 'key = value' or '[rule-name]'")
        key, value = m["key"], m["value"]
        if current is None:
            if key == "programs":
                programs = [p.strip() for p in value.split(",") if p.strip()]
            elif key == "service":
                service = value or None
            else:
                raise RuleError(path, lineno, f"unknown file key {key!r} (programs, service)")
            continue
        if key == "action":
            if value not in ACTIONS:
                raise RuleError(path, lineno, f"unknown action {value!r}")
            current.action = value
        elif key == "level":
            if value not in LEVELS:
                raise RuleError(path, lineno, f"unknown level {value!r} ({', '.join(LEVELS)})")
            current.level = value
        elif key == "service":
            current.service = value or None
        elif key == "match":
            try:
                current.patterns.append(compile_pattern(value))
            except PatternError as exc:
                col = f" (column {exc.column})" if exc.column else ""
                raise RuleError(path, lineno, f"bad pattern{col}: {exc}") from None
        elif key.startswith("set."):
            current.constants[key[4:]] = value
        else:
            raise RuleError(path, lineno, f"unknown rule key {key!r}")
    if not programs:
        raise RuleError(path, 1, "missing 'programs = ...' before the first rule")
    for rule in rules:
        if not rule.action:
            raise RuleError(path, rule.line, f"rule [{rule.name}] has no action")
        if not rule.patterns:
            raise RuleError(path, rule.line, f"rule [{rule.name}] has no match")
    return RuleFile(path, programs, service, rules)


def rule_files(dirs: Iterable[str | Path]) -> list[Path]:
    """`*.rules` in each directory, sorted; a later directory's file replaces a same-named one."""
    by_name: dict[str, Path] = {}
    for d in dirs:
        p = Path(d)
        if p.is_dir():
            for f in sorted(p.glob("*.rules")):
                by_name[f.name] = f
    return [by_name[k] for k in sorted(by_name)]


@dataclass
class Candidate:
    rule: Rule
    compiled: Compiled


# What the per-line loop walks: (the pattern's bound `match`, its candidate), in trial order.
Tries = list[tuple[Callable[[str], "re.Match[str] | None"], Candidate]]
MAX_KEYS = 4096  # remembered message keys per program; keys come from attacker text


def _tries(bucket: list[Candidate]) -> Tries:
    return [(c.compiled.regex.match, c) for c in bucket]


class _Index(dict):
    """Message key (its first KEY_LEN characters) -> the patterns to try, in file order.

    A pattern can only match a message that starts with its literal prefix, so a pattern whose
    prefix is KEY_LEN long or more sits under that key only, and one with a shorter prefix
    ("Did", "(", or none) under each key that starts with it. Keys met for the first time are
    worked out from the short-prefix patterns and remembered.
    """

    def __init__(self, cands: list[Candidate]) -> None:
        super().__init__()
        self.short = [c for c in cands if len(c.compiled.literal_prefix) < KEY_LEN]
        order = {id(c): i for i, c in enumerate(cands)}
        keyed: dict[str, list[Candidate]] = {}
        for c in cands:
            pre = c.compiled.literal_prefix
            if len(pre) >= KEY_LEN:
                keyed.setdefault(pre[:KEY_LEN], []).append(c)
        for k, v in keyed.items():
            bucket = v + [c for c in self.short if k.startswith(c.compiled.literal_prefix)]
            self[k] = _tries(sorted(bucket, key=lambda c: order[id(c)]))

    def __missing__(self, key: str) -> Tries:
        found = _tries([c for c in self.short if key.startswith(c.compiled.literal_prefix)])
        if len(self) < MAX_KEYS:
            self[key] = found
        return found


class RuleSet:
    """Rules indexed by program, then by the first characters of the message."""

    def __init__(self, files: list[RuleFile]) -> None:
        self.files = files
        self._by_program: dict[str, _Index] = {}
        self._wild: list[Candidate] = []
        specific: dict[str, list[Candidate]] = {}
        for rf in files:
            for rule in rf.rules:
                for comp in rule.patterns:
                    cand = Candidate(rule, comp)
                    for prog in rf.programs:
                        if prog == "*":
                            self._wild.append(cand)
                        else:
                            specific.setdefault(prog, []).append(cand)
        self._wild_index = _Index(self._wild)
        # no program known (a bare message): every rule may apply
        every: list[Candidate] = []
        for prog_cands in specific.values():
            every.extend(c for c in prog_cands if c not in every)
        self._all_index = _Index(every + self._wild)
        for prog, cands in specific.items():
            self._by_program[prog] = _Index(cands + self._wild)

    def tries(self, program: str | None, message: str) -> Tries:
        """The patterns that may match `message`, as (match, candidate), first match wins."""
        index = self._all_index if program is None else \
            self._by_program.get(program, self._wild_index)
        return index[message[:KEY_LEN]]

    def candidates(self, program: str | None, message: str) -> list[Candidate]:
        return [c for _, c in self.tries(program, message)]

    @property
    def rules(self) -> list[Rule]:
        return [r for f in self.files for r in f.rules]

    @classmethod
    def load(cls, dirs: Iterable[str | Path] | None = None) -> RuleSet:
        dirs = [shipped_rules_dir()] if dirs is None else list(dirs)
        return cls([load_file(p) for p in rule_files(dirs)])
