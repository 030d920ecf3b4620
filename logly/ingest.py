"""One-shot ingestion: input → parser → batched store writes with the checkpoint.

Parsing and writing run in two processes when the input is large (the parser's regexes and
SQLite's index updates each fill a core; threads would share one through the GIL); with more
CPUs a large plain file is cut into blocks for several parser processes (BLOCK_BYTES). Batches are
bounded by lines and by time; each batch's events and the input's new offset are committed in
one transaction, so an interrupted ingest resumes where it stopped and a repeated ingest of the
same input stores nothing twice.
"""

from __future__ import annotations

import gc
import json
import marshal
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from logly.errors import LoglyError
from logly.events import LogEvent
from logly.parsers.header import HeaderParser
from logly.parsers.line import LineParser
from logly.parsers.rules import RuleSet
from logly.sources.files import Input, end_offset, line_start_at_or_after, read_lines
from logly.store.sqlite import BatchHook, SQLiteStore

BATCH_LINES = 20_000
BATCH_SECONDS = 1.0
PARALLEL_MIN_BYTES = 8 << 20  # below this a second process costs more than it saves
# Indexes are dropped and rebuilt when a load brings more rows than the table holds, and at
# least this many (estimated from bytes at ~100 bytes a line): rebuilding sorts once.
BULK_MIN_ROWS = 100_000
# Which ones, without hooks: a log arrives in time order, so the indexes led by the timestamp
# (or the source, then the timestamp) grow at their right edge and cost the writer little,
# which it has to spare while the parser process is the slower one; the trace index is
# partial and new events have no trace. The address index takes rows all over its tree: that
# one is rebuilt, and rebuilding one index instead of four takes a third of the time (each
# rebuild reads the whole table). With hooks the writer is the slower one: all are dropped.
BULK_DROP_INDEXES = ("ix_log_events_ip_timestamp",)
QUEUE_BATCHES = 4  # bounds memory: at most this many parsed batches wait for the writer
# A large plain file is cut into blocks that parser processes take in turn; the writer stores
# them in file order. Each block's parser starts fresh and first reads the WARMUP_BYTES before
# its block (storing nothing), so sshd connections and PAM/sshd pairs that cross the cut are
# still joined; one that began further back is left unjoined (no address filled in), never
# joined wrongly.
BLOCK_BYTES = 16 << 20
WARMUP_BYTES = 1 << 20
MAX_PARSE_WORKERS = 4


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

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["lines_per_second"] = round(self.lines_per_second, 1)
        return d


@dataclass
class Batch:
    rows: list[tuple]
    unparsed: list[tuple[int, str, str]]
    next_offset: int
    lines: int
    matched: int
    reasons: dict[str, int]
    invalid_utf8: int = 0
    truncated: int = 0


Progress = Callable[[int], None]  # called with bytes consumed since the last call


def _json_dumps() -> Callable[[Any], str]:
    """`json.dumps(obj, ensure_ascii=False)`, less its per-call set-up.

    json.dumps builds an encoder object and a C encoder on every call with non-default options;
    here the C encoder is built once. The text is the same (same separators, key order and
    escaping); only the circular-reference check is left out: metadata is a tree of strings,
    numbers and small dicts that the parser builds, never a cycle.
    """
    enc = json.JSONEncoder(ensure_ascii=False)
    if c_make_encoder is None:  # pragma: no cover - CPython always has the C accelerator
        return enc.encode
    c_enc = c_make_encoder(None, enc.default, encode_basestring, None, enc.key_separator,
                           enc.item_separator, False, False, True)

    def dumps(obj: Any) -> str:
        return "".join(c_enc(obj, 0))

    return dumps


class MetadataEncoder:
    """Events as log_events rows; the metadata's JSON text is cached, since most events repeat
    a few shapes. Every source (files, the follower, the journal) builds its rows here."""

    def __init__(self, size: int = 4096) -> None:
        self._cache: dict[tuple, str] = {}
        self._size = size
        self._dumps = _json_dumps()

    def text(self, meta: dict[str, Any]) -> str | None:
        """The metadata column: JSON text, or None for no metadata."""
        if not meta:
            return None
        if "duplicate_of" in meta:  # holds a dict (unhashable) and an offset: never repeats
            return self._dumps(meta)
        try:
            key = tuple(meta.items())
            hit = self._cache.get(key)
        except TypeError:  # an unhashable value (a nested dict): encode directly
            return self._dumps(meta)
        if hit is None:
            hit = self._dumps(meta)
            if len(self._cache) >= self._size:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def row(self, ev: LogEvent, file_id: int, offset: int | None) -> tuple:
        """`ev` in EVENT_INSERT_COLUMNS order."""
        return (ev.timestamp, ev.source, ev.host, ev.program, ev.pid, ev.level, ev.service,
                ev.action, ev.message, ev.ip_address, ev.user, ev.port, self.text(ev.metadata),
                file_id, offset)


def parse_batches(
    inp: Input,
    rules: RuleSet,
    file_id: int,
    start: int,
    *,
    tz: tzinfo | None = None,
    year: int | None = None,
    batch_lines: int = BATCH_LINES,
    batch_seconds: float = BATCH_SECONDS,
    end: int | None = None,
    warmup: int | None = None,
    match_cache: dict | None = None,
) -> Iterator[Batch]:
    """Parse `inp` from byte `start` into store-ready batches (rows in EVENT_INSERT_COLUMNS).

    `end` stops at that line start; `warmup`, an earlier line start, is read first into the
    parser's connection memory, with nothing from it stored or counted. `match_cache` lets
    the parsers of one process's blocks share their rule-match results.
    """
    line_parser = LineParser(rules, HeaderParser(tz=tz, reference=inp.mtime, year=year))
    if match_cache is not None:
        line_parser.share_match_cache(match_cache)
    parse = line_parser.parse
    if warmup is not None and warmup < start:
        before = (inp.stats.invalid_utf8, inp.stats.truncated)
        for offset, _nxt, text in read_lines(inp, warmup, start):
            parse(text, inp.path, offset)
        inp.stats.invalid_utf8, inp.stats.truncated = before
    row = MetadataEncoder().row
    path = inp.path
    stats = inp.stats
    rows: list[tuple] = []
    unparsed: list[tuple[int, str, str]] = []
    reasons: dict[str, int] = {}
    matched = n = 0
    next_offset = start
    deadline = time.monotonic() + batch_seconds
    add = rows.append
    for offset, nxt, text in read_lines(inp, start, end):
        out = parse(text, path, offset)
        ev = out.event
        n += 1
        if ev is not None:
            if out.rule is not None:
                matched += 1
            add(row(ev, file_id, offset))
        else:
            reason = out.reason or "unparsed"
            reasons[reason] = reasons.get(reason, 0) + 1
            unparsed.append((offset, reason, text))
        next_offset = nxt
        if n >= batch_lines or (n & 1023 == 0 and time.monotonic() > deadline):
            yield Batch(rows, unparsed, next_offset, n, matched, reasons,
                        stats.invalid_utf8, stats.truncated)
            rows, unparsed, reasons, matched, n = [], [], {}, 0, 0
            add = rows.append
            stats.invalid_utf8 = stats.truncated = 0
            deadline = time.monotonic() + batch_seconds
    if n:
        yield Batch(rows, unparsed, next_offset, n, matched, reasons,
                    stats.invalid_utf8, stats.truncated)


def _encode_batch(b: Batch) -> bytes:
    """A batch as marshal bytes, for the writer process.

    Rows hold only str, int and None, and both ends are the same interpreter (a fork), which is
    what marshal asks; it writes and reads such data two to three times faster than pickle
    (no per-object memo), and the parser process is the one that limits throughput.
    """
    return marshal.dumps((b.rows, b.unparsed, b.next_offset, b.lines, b.matched, b.reasons,
                          b.invalid_utf8, b.truncated))


def _decode_batch(data: bytes) -> Batch:
    # 20,000 new tuples at once would run the cyclic collector some 30 times, over and over
    # the rows already waiting; they hold no cycles
    enabled = gc.isenabled()
    gc.disable()
    try:
        return Batch(*marshal.loads(data))
    finally:
        if enabled:
            gc.enable()


def parse_workers() -> int:
    """Parser processes for a large plain file: one per CPU this process may use beside the
    writer's, up to 4. (On 2 CPUs a second parser gained 0-4% of wall time for 60 MB: the
    writer, not the parser, is then the slower one.)"""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_PARSE_WORKERS, cpus - 1))


def block_bounds(inp: Input, start: int, block: int = BLOCK_BYTES) -> list[int]:
    """Line starts that cut a plain file from `start` into blocks of about `block` bytes; the
    last block runs to the end of the file, whatever it has grown to by then."""
    bounds = [start]
    size = inp.size or 0
    while bounds[-1] + block < size:
        nxt = line_start_at_or_after(inp, bounds[-1] + block)
        if nxt is None or nxt >= size:
            break
        bounds.append(nxt)
    return bounds


def _parse_worker(queue: Any, first: int, step: int, bounds: list[int], args: tuple,
                  kwargs: dict[str, Any]) -> None:
    """Parse blocks first, first + step, ... of `bounds` (one block: the whole input) with
    parse_batches(*args, block start, ...); b"" after each block, None at the end."""
    gc.disable()  # the hot path makes no reference cycles; the collector only costs time
    try:
        inp = args[0]
        if step > 1:  # forked children share the file position: each reads through its own
            inp.stream = open(f"/proc/self/fd/{inp.stream.fileno()}", "rb")  # noqa: SIM115
        cache: dict = {}
        for j in range(first, len(bounds), step):
            begin = bounds[j]
            end = bounds[j + 1] if j + 1 < len(bounds) else None
            warm = None
            if j:
                warm = line_start_at_or_after(inp, max(bounds[0], begin - WARMUP_BYTES))
            for batch in parse_batches(*args, begin, end=end, warmup=warm, match_cache=cache,
                                       **kwargs):
                queue.put(_encode_batch(batch))
            queue.put(b"")
        queue.put(None)
    except BaseException:  # report, never hang the writer
        queue.put(("error", traceback.format_exc()))


def _batches_in_children(args: tuple, kwargs: dict[str, Any], bounds: list[int],
                         workers: int) -> Iterator[Batch]:
    """Batches parsed by `workers` forked processes, block j by process j % workers, yielded
    in file order."""
    ctx = mp.get_context("fork")  # the children inherit the open input and the loaded rules
    queues = [ctx.Queue(QUEUE_BATCHES) for _ in range(workers)]
    procs = [ctx.Process(target=_parse_worker, args=(q, w, workers, bounds, args, kwargs),
                         daemon=True) for w, q in enumerate(queues)]
    for p in procs:
        p.start()
    try:
        for j in range(len(bounds)):
            queue = queues[j % workers]
            while True:
                item = queue.get()
                if item == b"":
                    break
                if item is None or isinstance(item, tuple):
                    detail = item[1] if item else "it stopped before its block's end"
                    raise LoglyError(f"parser process failed:\n{detail}")
                yield _decode_batch(item)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()


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
    parallel: bool | None = None,
    bulk: bool | None = None,
    hooks: Sequence[BatchHook] = (),
    block_bytes: int = BLOCK_BYTES,
    jobs: int | None = None,
) -> IngestSummary:
    """Store `inp`'s new lines. `parallel`: parse in other processes (default: for large or
    piped input); `jobs`: how many for a large plain file (default: parse_workers())."""
    t0 = time.perf_counter()
    summary = IngestSummary(inp.path)
    if not inp.head:
        return summary
    file_id, committed = store.open_source(inp.identity, inp.path, inp.kind, inp.device,
                                           inp.inode)
    summary.skipped_bytes = committed
    args = (inp, rules, file_id)  # then where to start: `committed`, or a block's start
    kwargs = {"tz": tz, "year": year, "batch_lines": batch_lines,
              "batch_seconds": batch_seconds}
    if parallel is None:
        parallel = inp.kind != "file" or (inp.size or 0) - committed >= PARALLEL_MIN_BYTES
    workers = (jobs or parse_workers()) if parallel and inp.kind == "file" else 1
    bounds = block_bounds(inp, committed, block_bytes) if workers > 1 else [committed]
    if parallel:
        batches = _batches_in_children(args, kwargs, bounds, min(workers, len(bounds)))
    else:
        batches = parse_batches(*args, committed, **kwargs)
    expected_rows = ((inp.size or 0) - committed) // 100
    bulk = bulk if bulk is not None else (
        expected_rows >= BULK_MIN_ROWS and expected_rows > store.approx_event_rows())
    if bulk:
        # with hooks (enrichment) the writer is the slower process: it keeps no index up
        store.drop_event_indexes(None if hooks else BULK_DROP_INDEXES)
    try:
        _write_batches(store, inp, file_id, committed, batches, summary, progress, hooks)
    finally:
        if bulk:
            store.ensure_indexes()
    summary.unparsed = sum(summary.unparsed_reasons.values())
    summary.seconds = time.perf_counter() - t0
    return summary


def _write_batches(store: SQLiteStore, inp: Input, file_id: int, done: int,
                   batches: Iterator[Batch], summary: IngestSummary,
                   progress: Progress | None, hooks: Sequence[BatchHook]) -> None:
    reasons = summary.unparsed_reasons
    for b in batches:
        summary.events += store.write_batch(file_id, b.rows, b.unparsed, b.next_offset,
                                            b.lines, end_offset(inp), hooks)
        summary.lines += b.lines
        summary.matched += b.matched
        summary.invalid_utf8 += b.invalid_utf8
        summary.truncated += b.truncated
        for k, v in b.reasons.items():
            reasons[k] = reasons.get(k, 0) + v
        if progress:
            progress(b.next_offset - done)
        done = b.next_offset
