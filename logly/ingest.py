"""One-shot ingestion: inputs → parser → batched store writes with the checkpoint.

Batches are bounded by lines and by time; each batch's events and the input's new offset are
committed in one transaction, so an interrupted ingest resumes where it stopped and a repeated
ingest of the same input stores nothing twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo

from logly.parsers.header import HeaderParser
from logly.parsers.line import LineParser
from logly.parsers.rules import RuleSet
from logly.sources.files import Input, end_offset, open_input, read_lines
from logly.store.sqlite import SQLiteStore

BATCH_LINES = 20_000
BATCH_SECONDS = 1.0


@dataclass
class IngestSummary:
    path: str
    lines: int = 0
    events: int = 0  # new events stored
    matched: int = 0  # lines a rule recognised
    unparsed: int = 0
    skipped_bytes: int = 0  # already stored before this run
    invalid_utf8: int = 0
    truncated: int = 0
    seconds: float = 0.0
    unparsed_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["lines_per_second"] = round(self.lines_per_second, 1)
        return d


Progress = Callable[[int], None]  # called with bytes consumed since the last call


def ingest_input(
    store: SQLiteStore,
    rules: RuleSet,
    inp: Input,
    *,
    tz: tzinfo | None = None,
    year: int | None = None,
    progress: Progress | None = None,
    batch_lines: int = BATCH_LINES,
    batch_seconds: float = BATCH_SECONDS,
) -> IngestSummary:
    t0 = time.perf_counter()
    summary = IngestSummary(inp.path)
    if not inp.head:
        return summary
    file_id, committed = store.open_source(inp.identity, inp.path, inp.kind, inp.device,
                                           inp.inode)
    summary.skipped_bytes = committed
    parser = LineParser(rules, HeaderParser(tz=tz, reference=inp.mtime, year=year))
    parse = parser.parse
    path = inp.path
    rows: list[tuple] = []
    unparsed: list[tuple[int, str, str]] = []
    reasons = summary.unparsed_reasons
    next_offset = committed
    batch_start = committed
    deadline = time.monotonic() + batch_seconds
    n = 0

    def flush() -> None:
        nonlocal rows, unparsed, batch_start, deadline, n
        summary.events += store.write_batch(file_id, rows, unparsed, next_offset, n,
                                            end_offset(inp))
        summary.lines += n
        if progress:
            progress(next_offset - batch_start)
        rows, unparsed, n = [], [], 0
        batch_start = next_offset
        deadline = time.monotonic() + batch_seconds

    for offset, nxt, text in read_lines(inp, committed):
        out = parse(text, path, offset)
        ev = out.event
        n += 1
        if ev is not None:
            if out.rule is not None:
                summary.matched += 1
            meta = ev.metadata
            rows.append((
                ev.timestamp, ev.source, ev.host, ev.program, ev.pid, ev.level, ev.service,
                ev.action, ev.message, ev.ip_address, ev.user, ev.port,
                json.dumps(meta, ensure_ascii=False) if meta else None, file_id, offset,
            ))
        else:
            reason = out.reason or "unparsed"
            reasons[reason] = reasons.get(reason, 0) + 1
            unparsed.append((offset, reason, text))
        next_offset = nxt
        if n >= batch_lines or (n & 1023 == 0 and time.monotonic() > deadline):
            flush()
    flush()
    summary.unparsed = sum(reasons.values())
    summary.invalid_utf8 = inp.stats.invalid_utf8
    summary.truncated = inp.stats.truncated
    summary.seconds = time.perf_counter() - t0
    return summary


def ingest_paths(
    store: SQLiteStore, rules: RuleSet, paths: list[str], **kwargs
) -> list[IngestSummary]:
    out = []
    for path in paths:
        inp = open_input(path)
        try:
            out.append(ingest_input(store, rules, inp, **kwargs))
        finally:
            inp.close()
    return out
