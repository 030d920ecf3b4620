"""Replay CrowdSec's hub scenario tests through ingest + correlation.

For each test folder in ../shared/corpora/crowdsec-hub/tests that has a `scenario.assert`, the
log is ingested into a fresh database with the correlation hooks; every (address, scenario)
the assert expects must have a trace for that address with the step that matches the
scenario, and no other address of the log may get a trace. Skipped when the corpus is absent,
unless CI is set (then it fails).

    python tests/test_crowdsec_scenarios.py      # prints the table for the closing note
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "crowdsec-hub" / "tests"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpora/crowdsec-hub/tests")

# CrowdSec scenario -> the correlation step that means the same thing
SCENARIO_STEP = {
    "crowdsecurity/ssh-bf": "brute-force",
    "crowdsecurity/ssh-bf_user-enum": "password-spray",
    "crowdsecurity/ssh-slow-bf": "slow-brute-force",
    "crowdsecurity/ssh-slow-bf_user-enum": "password-spray",
    "crowdsecurity/ssh-time-based-bf": "time-based-brute-force",
    "crowdsecurity/ssh-time-based-bf_user-enum": "time-based-brute-force",
    "crowdsecurity/ssh-generic-test": "canary-user",
    "crowdsecurity/iptables-scan-multi_ports": "port-scan",
    "lepresidente/ssh-bad-keyexchange-bf": "brute-force",
    # below every brute-force threshold: patterns that count only SCENARIO_RULES' rules
    "crowdsecurity/ssh-cve-2024-6387": "cve-2024-6387",
    "crowdsecurity/ssh-refused-conn": "tcpwrappers-refused",
}
# scenarios Logly has no pattern for (yet), scenario -> why; listed so that covering one makes
# this test say so
UNSUPPORTED: dict[str, str] = {}
# The parser's half of a scenario: the rules (metadata "rule") whose lines the scenario counts,
# matching CrowdSec's log_type filter (ssh_auth_timeout + ssh_dispatch_fatal for
# ssh-cve-2024-6387, ssh_refused_conn for ssh-refused-conn). Each has a rule name of its own,
# which the scenario's correlation pattern selects (`rules = [...]` in correlation.toml).
SCENARIO_RULES = {
    "crowdsecurity/ssh-cve-2024-6387": frozenset({"sshd/login-timeout", "sshd/dispatch-fatal"}),
    "crowdsecurity/ssh-refused-conn": frozenset({"sshd/tcpwrappers-refused"}),
}
_SOURCE = re.compile(r'^"(?P<ip>[^"]+)" in results\[(?P<k>\d+)\]\.Overflow\.GetSources\(\)')
_SCENARIO = re.compile(
    r'^results\[(?P<k>\d+)\]\.Overflow\.Alert\.GetScenario\(\) == "(?P<s>[^"]+)"')


_EVENTS = re.compile(r'^results\[(?P<k>\d+)\]\.Overflow\.Alert\.GetEventsCount\(\) == (?P<n>\d+)')


def _alerts(folder: Path) -> dict[tuple[str, str], int | None]:
    """(address, scenario) of each alert scenario.assert expects -> its event count (None
    where the file does not say)."""
    sources: dict[str, set[str]] = {}
    scenarios: dict[str, str] = {}
    counts: dict[str, int] = {}
    for raw in (folder / "scenario.assert").read_text(encoding="utf-8").splitlines():
        if m := _SOURCE.match(raw.strip()):
            sources.setdefault(m["k"], set()).add(m["ip"])
        elif m := _SCENARIO.match(raw.strip()):
            scenarios[m["k"]] = m["s"]
        elif m := _EVENTS.match(raw.strip()):
            counts[m["k"]] = int(m["n"])
    return {(ip, scenarios[k]): counts.get(k) for k, ips in sources.items() for ip in ips}


def expected_event_counts(folder: Path) -> dict[tuple[str, str], int]:
    """(address, scenario) -> how many events CrowdSec's alert holds."""
    return {key: n for key, n in _alerts(folder).items() if n is not None}


def expected_alerts(folder: Path) -> set[tuple[str, str]]:
    return set(_alerts(folder))


def scenario_tests() -> list[str]:
    if not CORPUS.is_dir():
        return []
    return sorted(p.parent.name for p in CORPUS.glob("*/scenario.assert")
                  if expected_alerts(p.parent))


def replay(name: str, workdir: Path) -> tuple[set[tuple[str, str]], dict[str, list[dict]],
                                              set[str]]:
    """(expected alerts, traces by address, every address in the log)."""
    from logly.ingest import ingest_input
    from logly.parsers.rules import RuleSet
    from logly.sources.files import open_input
    from logly.store.sqlite import SQLiteStore
    from logly.tracer.correlate import make_hooks

    class Cfg:
        sections: dict = {}

    folder = CORPUS / name
    config = (folder / "config.yaml").read_text(encoding="utf-8")
    log_name = re.search(r"^log_file:\s*(\S+)", config, re.M)[1]  # type: ignore[index]
    log = workdir / log_name
    shutil.copy(folder / log_name, log)
    os.utime(log, (1764000000, 1764000000))  # year-less stamps get a stable year
    store = SQLiteStore(workdir / f"{name}.db")
    store.init()
    inp = open_input(str(log))
    try:
        ingest_input(store, RuleSet.load(), inp, hooks=make_hooks(Cfg()), parallel=False)
    finally:
        inp.close()
    by_ip: dict[str, list[dict]] = {}
    with store.engine.connect() as conn:
        for ip, sev, causality in conn.exec_driver_sql(
                "SELECT ip_address, severity, causality FROM event_traces"):
            steps = [s["pattern"] for s in json.loads(causality)["steps"]]
            by_ip.setdefault(ip, []).append({"severity": sev, "steps": steps})
        addresses = {r[0] for r in conn.exec_driver_sql(
            "SELECT DISTINCT ip_address FROM log_events WHERE ip_address IS NOT NULL")}
    store.close()
    return expected_alerts(folder), by_ip, addresses


@pytest.mark.parametrize("name", scenario_tests() or ["<corpus absent>"])
def test_crowdsec_scenario(name: str, tmp_path: Path) -> None:
    if name == "<corpus absent>":
        if os.environ.get("CI"):
            pytest.fail(f"CrowdSec corpus not found at {CORPUS}")
        pytest.skip(f"CrowdSec corpus not found at {CORPUS}")
    expected, by_ip, addresses = replay(name, tmp_path)
    assert expected, "the assert names no alerts"
    for ip, scenario in expected:
        if scenario in UNSUPPORTED:
            assert ip not in by_ip, f"{scenario} is covered now: move it to SCENARIO_STEP"
            continue
        step = SCENARIO_STEP[scenario]
        steps = {s for t in by_ip.get(ip, []) for s in t["steps"]}
        assert step in steps, f"{ip}: expected {step} for {scenario}, got {sorted(steps)}"
    wanted = {ip for ip, _ in expected}
    extra = {ip: by_ip[ip] for ip in by_ip if ip not in wanted}
    assert not extra, f"traces for addresses the assert does not expect: {extra}"
    assert wanted <= addresses | {None}


def _rule_events(db: Path) -> dict[str, list[tuple[str, str | None]]]:
    """address -> (action, rule) of each stored event, in file order."""
    from logly.store.sqlite import SQLiteStore

    store = SQLiteStore(db)
    out: dict[str, list[tuple[str, str | None]]] = {}
    try:
        with store.engine.connect() as conn:
            for ip, action, meta in conn.exec_driver_sql(
                    'SELECT ip_address, action, metadata FROM log_events '
                    'WHERE ip_address IS NOT NULL ORDER BY "offset"'):
                rule = json.loads(meta).get("rule") if meta else None
                out.setdefault(ip, []).append((action, rule))
    finally:
        store.close()
    return out


@pytest.mark.parametrize("name", [n for n in scenario_tests()
                                  if {s for _, s in expected_alerts(CORPUS / n)}
                                  & set(SCENARIO_RULES)] or ["<corpus absent>"])
def test_scenario_lines_have_rules_of_their_own(name: str, tmp_path: Path) -> None:
    """Every line a rule-selected scenario counts is an attack signal under its own rule."""
    if name == "<corpus absent>":
        if os.environ.get("CI"):
            pytest.fail(f"CrowdSec corpus not found at {CORPUS}")
        pytest.skip(f"CrowdSec corpus not found at {CORPUS}")
    from logly.events import ATTACK_ACTIONS

    replay(name, tmp_path)
    events = _rule_events(tmp_path / f"{name}.db")
    for (ip, scenario), count in expected_event_counts(CORPUS / name).items():
        rules = SCENARIO_RULES.get(scenario)
        if rules is None:
            continue
        got = events.get(ip, [])
        hits = [r for a, r in got if r in rules and a in ATTACK_ACTIONS]
        assert len(hits) >= count, (
            f"{ip}: {scenario} counts {count} events, Logly has {len(hits)} under "
            f"{sorted(rules)}: {got}")


def test_scenario_patterns_select_the_scenario_rules() -> None:
    """The correlation pattern of a rule-selected scenario counts exactly its rules."""
    from logly.tracer.patterns import load_rules

    patterns = load_rules().patterns
    for scenario, rules in SCENARIO_RULES.items():
        assert patterns[SCENARIO_STEP[scenario]].rules == rules, scenario


def main() -> None:
    import tempfile

    print("| test | address | CrowdSec scenario | Logly trace (steps, severity) | ok |")
    print("|---|---|---|---|---|")
    for name in scenario_tests():
        with tempfile.TemporaryDirectory() as d:
            expected, by_ip, addresses = replay(name, Path(d))
        for ip, scenario in sorted(expected):
            got = "; ".join(f"{'+'.join(t['steps'])} ({t['severity']})"
                            for t in by_ip.get(ip, [])) or "none"
            step = SCENARIO_STEP.get(scenario)
            ok = ("not covered" if scenario in UNSUPPORTED else
                  "yes" if any(step in t["steps"] for t in by_ip.get(ip, [])) else "NO")
            print(f"| {name} | {ip} | {scenario} | {got} | {ok} |")
        for ip in sorted(a for a in addresses if a not in {i for i, _ in expected}):
            got = "; ".join(f"{'+'.join(t['steps'])} ({t['severity']})"
                            for t in by_ip.get(ip, [])) or "none"
            print(f"| {name} | {ip} | (none expected) | {got} | "
                  f"{'yes' if ip not in by_ip else 'NO'} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
