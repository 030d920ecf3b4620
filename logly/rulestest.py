"""`logly rules test`: run the rules over lines and say, per line, what matched and why not."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from logly.parsers.header import HeaderParser
from logly.parsers.line import LineParser
from logly.sources.files import open_input, read_lines

if TYPE_CHECKING:
    from logly.cli import Context


@dataclass
class RulesReport:
    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: int = 0
    matched: int = 0
    other: int = 0
    unparsed: int = 0
    per_rule: dict[str, int] = field(default_factory=dict)


def test_lines(ctx: Context, file: str | None, *, from_db: bool = False,
               limit: int | None = None) -> RulesReport:
    rules = ctx.rules()
    tz = ctx.config.tzinfo()
    report = RulesReport()
    if from_db:
        parser = LineParser(rules, HeaderParser(tz=tz))
        lines = [(i, u["line"]) for i, u in enumerate(ctx.store().unparsed_lines(limit or 1000), 1)]
    else:
        inp = open_input(file or "-")
        parser = LineParser(rules, HeaderParser(tz=tz, reference=inp.mtime))
        lines = ((i, text) for i, (_o, _n, text) in enumerate(read_lines(inp), 1))
    for lineno, text in lines:
        if limit is not None and report.lines >= limit:
            break
        report.lines += 1
        out = parser.parse(text)
        ev = out.event
        row: dict[str, Any] = {"line": lineno, "text": text, "rule": None, "reason": out.reason,
                               "action": None, "ip_address": None, "user": None, "port": None,
                               "timestamp": None, "program": None, "metadata": {}}
        if ev is not None:
            row.update(action=ev.action, ip_address=ev.ip_address, user=ev.user, port=ev.port,
                       timestamp=ev.timestamp, program=ev.program, metadata=ev.metadata)
            if out.rule is not None:
                row["rule"] = out.rule.name
                report.matched += 1
                report.per_rule[out.rule.name] = report.per_rule.get(out.rule.name, 0) + 1
            else:
                row["reason"] = "no rule for this message"
                report.other += 1
        else:
            report.unparsed += 1
        report.rows.append(row)
    return report
