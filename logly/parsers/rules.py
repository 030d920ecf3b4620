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


def shipped_rules_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "rules", here.parent / "rules"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("shipped rules/ directory not found")


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
_Index = tuple[dict[str, list[Candidate]], list[Candidate], dict[str, Tries], Tries]


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
        self._wild_index = self._index(self._wild)
        # no program known (a bare message): every rule may apply
        every: list[Candidate] = []
        for prog_cands in specific.values():
            every.extend(c for c in prog_cands if c not in every)
        self._all_index = self._index(every + self._wild)
        for prog, cands in specific.items():
            self._by_program[prog] = self._index(cands + self._wild)

    @staticmethod
    def _index(cands: list[Candidate]) -> _Index:
        keyed: dict[str, list[Candidate]] = {}
        always: list[Candidate] = []
        for c in cands:
            pre = c.compiled.literal_prefix
            if len(pre) >= KEY_LEN:
                keyed.setdefault(pre[:KEY_LEN], []).append(c)
            else:
                always.append(c)
        # keep file order inside each bucket, with always-tried rules merged in that order
        order = {id(c): i for i, c in enumerate(cands)}
        for k in keyed:
            keyed[k] = sorted(keyed[k] + always, key=lambda c: order[id(c)])

        def tries(bucket: list[Candidate]) -> Tries:
            return [(c.compiled.regex.match, c) for c in bucket]

        return keyed, always, {k: tries(v) for k, v in keyed.items()}, tries(always)

    def _lookup(self, program: str | None) -> _Index:
        if program is None:
            return self._all_index
        return self._by_program.get(program) or self._wild_index

    def candidates(self, program: str | None, message: str) -> list[Candidate]:
        keyed, always, _, _ = self._lookup(program)
        return keyed.get(message[:KEY_LEN], always)

    def tries(self, program: str | None, message: str) -> Tries:
        """candidates() as (match, candidate) pairs: the per-line loop skips two lookups a try."""
        index = self._all_index if program is None else \
            self._by_program.get(program, self._wild_index)
        return index[2].get(message[:KEY_LEN], index[3])

    @property
    def rules(self) -> list[Rule]:
        return [r for f in self.files for r in f.rules]

    @classmethod
    def load(cls, dirs: Iterable[str | Path] | None = None) -> RuleSet:
        dirs = [shipped_rules_dir()] if dirs is None else list(dirs)
        return cls([load_file(p) for p in rule_files(dirs)])
