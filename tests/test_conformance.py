"""Conformance on the annotated corpora of fail2ban, sshguard and CrowdSec (../shared/corpora).

Every corpus is stored with `logly ingest`'s code and scored by logly/conformance.py (the same
module `python bench/conformance.py` prints its table with). Promises (issue 2): no wrong
attribution anywhere; recall ≥ 95% on fail2ban's sshd (normal mode), pam-generic and recidive,
sshguard's SSH section and CrowdSec's sshd-logs. Without the corpora the tests skip, unless
`CI` is set: there a missing corpus is a failure, not a pass.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from logly import conformance
from logly.parsers.rules import RuleSet

ROOT = conformance.corpora_dir()
PRESENT = ROOT.is_dir()


def test_corpora_are_present_in_ci() -> None:
    if not PRESENT:
        if os.environ.get("CI"):
            pytest.fail(f"corpora missing at {ROOT} (set {conformance.ENV}); required in CI")
        pytest.skip(f"no corpora at {ROOT}")


needs_corpora = pytest.mark.skipif(not PRESENT and not os.environ.get("CI"),
                                   reason=f"no corpora at {ROOT}")


@pytest.fixture(scope="module")
def scores() -> dict[str, conformance.Score]:
    if not PRESENT:
        pytest.fail(f"corpora missing at {ROOT}; required in CI")
    return {s.name: s for s in conformance.run(ROOT, RuleSet.load())}


@needs_corpora
def test_no_wrong_attribution_on_any_corpus(scores: dict[str, conformance.Score]) -> None:
    wrong = [f"{s.name} {w}" for s in scores.values() for w in s.wrongs]
    assert not wrong, "\n".join(wrong)
    assert len(scores) >= 20  # every folder was read: fail2ban, sshguard and CrowdSec rows


@needs_corpora
@pytest.mark.parametrize("name", sorted(conformance.REQUIRED))
def test_recall_on_the_promised_corpora(scores: dict[str, conformance.Score], name: str) -> None:
    s = scores[name]
    assert s.annotated >= 4, f"{name}: only {s.annotated} annotated attacks were read"
    assert s.recall is not None and s.recall >= conformance.RECALL_TARGET, (
        f"{name}: recall {s.found}/{s.annotated}\n" + "\n".join(s.misses))


# --- the scorer itself can fail --------------------------------------------------------------

def _score(lines: list[str], cases: list[conformance.Case]) -> conformance.Score:
    corpus = conformance.Corpus("demo/x", ("\n".join(lines) + "\n").encode(), cases)
    with tempfile.TemporaryDirectory() as tmp:
        return conformance.score(corpus, conformance.ingest_corpus(corpus, RuleSet.load(),
                                                                   Path(tmp)))


def test_scorer_counts_a_wrong_address_a_miss_and_a_false_positive() -> None:
    lines = [
        "Nov 24 10:00:00 h sshd[1]: Invalid user a from 203.0.113.7 port 22",
        "Nov 24 10:00:01 h sshd[2]: Invalid user b from 203.0.113.8 port 22",
        "Nov 24 10:00:02 h sshd[3]: Server listening on 0.0.0.0 port 22.",
        "Nov 24 10:00:03 h sshd[4]: Did not receive identification string from 198.51.100.1",
        "Nov 24 10:00:04 h sshd[5]: Invalid user c from example.net",
    ]
    s = _score(lines, [
        conformance.Case(1, True, "203.0.113.7"),  # found
        conformance.Case(2, True, "6.6.6.6"),  # Logly blames another address: wrong + miss
        conformance.Case(3, True, "192.0.2.1"),  # no event for it: a miss
        conformance.Case(4, False),  # annotated harmless, Logly blames: false positive
        conformance.Case(5, True, "example.net"),  # a name: kept as rhost, not an address
    ])
    assert (s.annotated, s.found, s.wrong, s.false_positives) == (3, 1, 1, 1)
    assert (s.named, s.named_found) == (1, 1)
    assert s.recall == pytest.approx(1 / 3) and not s.ok


def test_corpora_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv(conformance.ENV, str(tmp_path))
    assert conformance.corpora_dir() == tmp_path
    monkeypatch.delenv(conformance.ENV)
    assert conformance.corpora_dir().parts[-2:] == ("shared", "corpora")
