"""Conformance table: Logly over the annotated corpora of fail2ban, sshguard and CrowdSec.

    python bench/conformance.py                      # table over ../shared/corpora
    python bench/conformance.py --misses             # and each missed / wrongly blamed line
    python bench/conformance.py --json out.json      # the figures as JSON
    LOGLY_CORPORA=/path/to/corpora python bench/conformance.py

Per corpus: lines fed, annotated attacks with an IP (scored mode), found, recall, wrong
attributions (must be 0), false positives (lines the annotation calls harmless where Logly
blames an address: each tool draws that line differently), and attacks annotated by host name.
Rows marked * carry the ≥ 95% recall promise. The scoring is logly/conformance.py, shared with
tests/test_conformance.py. Exit status 1 when a promise is broken.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from logly import conformance  # noqa: E402
from logly.clikit import cell  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", type=Path, default=None, help="default: $LOGLY_CORPORA or "
                    "../shared/corpora beside the repository")
    ap.add_argument("--misses", action="store_true", help="list missed and wrong lines")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    root = args.corpora or conformance.corpora_dir()
    if not root.is_dir():
        print(f"no corpora at {root} (set {conformance.ENV})", file=sys.stderr)
        return 2
    scores = conformance.run(root)
    table = Table(title=f"Logly conformance ({root.resolve()})")
    for col in ("corpus", "lines", "attacks", "found", "recall", "wrong", "false pos.",
                "by name"):
        table.add_column(col, justify="left" if col == "corpus" else "right")
    for s in scores:
        recall = f"{s.recall:.1%}" if s.recall is not None else "-"
        named = f"{s.named_found}/{s.named}" if s.named else "-"
        table.add_row(cell(s.name + (" *" if s.required else "")), str(s.lines),
                      str(s.annotated), str(s.found), recall, str(s.wrong),
                      str(s.false_positives), named,
                      style=None if s.ok else "bold red")
    console = Console()
    console.print(table)
    total_a = sum(s.annotated for s in scores)
    total_f = sum(s.found for s in scores)
    console.print(f"all corpora: {total_f}/{total_a} annotated attacks found, "
                  f"{sum(s.wrong for s in scores)} wrong attributions; "
                  f"* = recall ≥ {conformance.RECALL_TARGET:.0%} required")
    if args.misses:
        for s in scores:
            for m in s.wrongs:
                console.print(cell(f"WRONG {s.name} {m}"))
            for m in s.misses:
                console.print(cell(f"miss  {s.name} {m}"))
    if args.json:
        args.json.write_text(json.dumps([
            {"corpus": s.name, "lines": s.lines, "attacks": s.annotated, "found": s.found,
             "recall": s.recall, "wrong": s.wrong, "false_positives": s.false_positives,
             "named": s.named, "named_found": s.named_found, "required": s.required}
            for s in scores], indent=2) + "\n")
    return 0 if all(s.ok for s in scores) else 1


if __name__ == "__main__":
    sys.exit(main())
