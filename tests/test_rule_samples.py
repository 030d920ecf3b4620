"""Every shipped rule file against its sample logs, CrowdSec-hub style.

Each rule file `rules/<stem>.rules` has a folder `rules/tests/<stem>/` holding:

- `<stem>.log` and `expected.jsonl`: one JSON object per non-blank log line, in order, with
  `rule` (`<stem>/<section>` or null), `action`, `ip_address`, `user`, `port` (null where
  absent) and optionally `metadata` (a subset that must be present), `timestamp`, `program`,
  `pid`;
- `fp.log` (optional): lines that must produce no attack-signal action;
- `injection.log` + `injection.jsonl` (optional): hostile text, checked like `<stem>.log`.

On top of that: every rule file loads, every rule matches at least one sample line of its folder
(fail2ban's practice: a rule nobody can show a line for is not kept), and a broken rule file
says which file and which line.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from logly.events import ATTACK_ACTIONS
from logly.parsers.header import HeaderParser
from logly.parsers.line import LineParser, Outcome
from logly.parsers.rules import RuleError, RuleSet, load_file, rule_files, shipped_rules_dir

RULES_DIR = shipped_rules_dir()
SAMPLES_DIR = RULES_DIR / "tests"
REFERENCE = datetime(2026, 11, 25, tzinfo=UTC)
FIELDS = ("rule", "action", "ip_address", "user", "port")
OPTIONAL_FIELDS = ("timestamp", "program", "pid")

SAMPLE_FOLDERS = sorted(p for p in SAMPLES_DIR.glob("*") if p.is_dir())
RULE_FILES = rule_files([RULES_DIR])


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    return RuleSet.load()


def _parser(ruleset: RuleSet) -> LineParser:
    # a fresh parser per file: LineParser keeps state between lines (the sshd/PAM link)
    return LineParser(ruleset, HeaderParser(tz=UTC, reference=REFERENCE))


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _expectations(path: Path) -> list[dict[str, Any]]:
    out = []
    for n, ln in enumerate(_lines(path), 1):
        try:
            obj = json.loads(ln)
        except ValueError as exc:
            raise AssertionError(f"{path}:{n}: not JSON: {exc}") from None
        assert isinstance(obj, dict), f"{path}:{n}: not a JSON object"
        out.append(obj)
    return out


def _observed(outcome: Outcome) -> dict[str, Any]:
    ev = outcome.event
    if ev is None:
        return {name: None for name in FIELDS + OPTIONAL_FIELDS} | {"metadata": {}}
    return {
        "rule": ev.metadata.get("rule"),
        "action": ev.action,
        "ip_address": ev.ip_address,
        "user": ev.user,
        "port": ev.port,
        "timestamp": ev.timestamp,
        "program": ev.program,
        "pid": ev.pid,
        "metadata": ev.metadata,
    }


def _compare(log: Path, expected: Path, ruleset: RuleSet) -> list[str]:
    lines = _lines(log)
    wants = _expectations(expected)
    assert len(lines) == len(wants), (
        f"{log.name} has {len(lines)} non-blank lines, {expected.name} {len(wants)} objects"
    )
    parser = _parser(ruleset)
    problems = []
    for n, (line, want) in enumerate(zip(lines, wants, strict=True), 1):
        got = _observed(parser.parse(line, str(log), None))
        diffs = []
        for name in FIELDS:
            if got[name] != want.get(name):
                diffs.append(f"{name}: expected {want.get(name)!r}, got {got[name]!r}")
        for name in OPTIONAL_FIELDS:
            if name in want and got[name] != want[name]:
                diffs.append(f"{name}: expected {want[name]!r}, got {got[name]!r}")
        for key, value in (want.get("metadata") or {}).items():
            if got["metadata"].get(key) != value:
                diffs.append(f"metadata[{key!r}]: expected {value!r}, "
                             f"got {got['metadata'].get(key)!r}")
        if diffs:
            problems.append(f"{log.name} line {n}: {line[:120]!r}\n    " + "\n    ".join(diffs))
    return problems


def _folder_id(p: Path) -> str:
    return p.name


@pytest.mark.parametrize("folder", SAMPLE_FOLDERS, ids=_folder_id)
def test_samples_give_the_expected_events(folder: Path, ruleset: RuleSet) -> None:
    log = folder / f"{folder.name}.log"
    expected = folder / "expected.jsonl"
    assert log.is_file(), f"{folder} has no {log.name}"
    assert expected.is_file(), f"{folder} has no expected.jsonl"
    problems = _compare(log, expected, ruleset)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("folder", SAMPLE_FOLDERS, ids=_folder_id)
def test_false_positive_samples_are_not_attacks(folder: Path, ruleset: RuleSet) -> None:
    fp = folder / "fp.log"
    if not fp.is_file():
        pytest.skip("no fp.log")
    parser = _parser(ruleset)
    flagged = []
    for n, line in enumerate(_lines(fp), 1):
        ev = parser.parse(line, str(fp), None).event
        if ev is not None and ev.action in ATTACK_ACTIONS:
            flagged.append(f"fp.log line {n}: {ev.action} ({ev.metadata.get('rule')}, "
                           f"ip={ev.ip_address}): {line[:120]!r}")
    assert not flagged, "\n".join(flagged)


@pytest.mark.parametrize("folder", SAMPLE_FOLDERS, ids=_folder_id)
def test_injection_samples_keep_the_right_address(folder: Path, ruleset: RuleSet) -> None:
    log = folder / "injection.log"
    expected = folder / "injection.jsonl"
    if not log.is_file():
        pytest.skip("no injection.log")
    assert expected.is_file(), f"{folder} has injection.log but no injection.jsonl"
    problems = _compare(log, expected, ruleset)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rule_file_loads(path: Path) -> None:
    rf = load_file(path)
    assert rf.programs, f"{path.name}: no programs"
    assert rf.rules, f"{path.name}: no rules"


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_every_rule_matches_a_sample(path: Path, ruleset: RuleSet) -> None:
    stem = path.stem
    names = [r.name for r in ruleset.rules if Path(r.file).stem == stem]
    folder = SAMPLES_DIR / stem
    assert folder.is_dir(), f"{path.name} has no sample folder rules/tests/{stem}/"
    seen: set[str] = set()
    for log in sorted(folder.glob("*.log")):
        parser = _parser(ruleset)
        for line in _lines(log):
            rule = parser.parse(line, str(log), None).rule
            if rule is not None:
                seen.add(rule.name)
    missing = [n for n in names if n not in seen]
    assert not missing, f"rules with no sample line in rules/tests/{stem}/: {', '.join(missing)}"


def test_every_sample_folder_has_a_rule_file() -> None:
    stems = {p.stem for p in RULE_FILES}
    orphans = [f.name for f in SAMPLE_FOLDERS if f.name not in stems]
    assert not orphans, f"sample folders without rules/<stem>.rules: {orphans}"


# --- broken rule files say where ------------------------------------------------------------

BROKEN = {
    "unknown-action": (
        "programs = demo\n\n[x]\naction = hacked\nmatch = hello <user>\n",
        4,
        "unknown action",
    ),
    "bad-pattern": (
        "# a comment\nprograms = demo\n[x]\naction = info\nmatch = from <ip\n",
        5,
        "bad pattern",
    ),
    "missing-programs": (
        "[x]\naction = info\nmatch = hello\n",
        1,
        "programs",
    ),
    "no-action": (
        "programs = demo\n\n\n[x]\nmatch = hello\n",
        4,
        "no action",
    ),
    "not-key-value": (
        "programs = demo\n[x]\naction = info\nthis is not a setting\n",
        4,
        "key = value",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_rule_file_names_file_and_line(tmp_path: Path, case: str) -> None:
    text, line, why = BROKEN[case]
    path = tmp_path / f"{case}.rules"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RuleError) as info:
        load_file(path)
    err = info.value
    assert err.line == line
    assert str(err).startswith(f"{path}:{line}: ")
    assert why in str(err)
    # and RuleSet.load over a directory holding it fails the same way
    with pytest.raises(RuleError) as again:
        RuleSet.load([tmp_path])
    assert str(again.value) == str(err)
