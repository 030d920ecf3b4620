"""Following live log files: appended lines, rotation, truncation, files that come and go.

A `Follower` owns one configured path. Each `poll()` reads the complete lines added since the
last one (a partial last line waits for its newline) and parses them into a pending batch;
`flush()` stores that batch together with the file's new offset in one transaction.

Rotation is recognised by the path's device and inode changing (rename + create); the old file
stays open and is drained before it is let go, so a line written just before rotation is not
lost. Copytruncate shows as the file shrinking below the read position; the lines between the
position and the truncation are recovered from the rotated copy (`path.1`, found by the same
identity). On start, rotated siblings whose identity is known and whose end is past the
committed offset are drained first: lines written while the daemon was down are not lost.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from logly.ingest import MetadataEncoder
from logly.parsers.header import HeaderParser
from logly.parsers.line import LineParser
from logly.parsers.rules import RuleSet
from logly.sources.files import (
    FINGERPRINT_BYTES,
    MAX_LINE_BYTES,
    InputStats,
    decode_line,
    identity_of,
)
from logly.store.sqlite import BatchHook, SQLiteStore

log = logging.getLogger("logly.follow")

READ_BYTES = 1 << 20  # per poll and file: bounds memory whatever the burst
DRAIN_GRACE = 2.0  # seconds a rotated file is still read, for writers that reopen late


@dataclass
class Pending:
    rows: list[tuple] = field(default_factory=list)
    unparsed: list[tuple[int, str, str]] = field(default_factory=list)
    lines: int = 0
    since: float = 0.0  # monotonic time of the oldest pending line


@dataclass
class OpenFile:
    """One inode being read: the live file or a rotated one being drained."""

    path: str
    stream: BinaryIO
    dev: int
    ino: int
    gz: bool = False
    identity: str | None = None
    file_id: int | None = None
    offset: int = 0  # next byte to parse (ahead of the committed offset until a flush)
    pending: Pending = field(default_factory=Pending)
    parser: LineParser | None = None
    draining_since: float | None = None
    last_growth: float = field(default_factory=time.monotonic)
    size: int = 0
    head: bytes = b""  # the first line: copytruncate can refill a file past our offset
    mtime_ns: int = 0
    cutting: bool = False  # inside a line over MAX_LINE_BYTES: its rest is skipped, as ingest does

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.close()


class Follower:
    def __init__(
        self,
        store: SQLiteStore,
        rules: RuleSet,
        path: str,
        *,
        from_start: bool = False,
        tz=None,  # type: ignore[no-untyped-def]
        hooks: list[BatchHook] | None = None,
    ) -> None:
        self.store = store
        self.rules = rules
        self.path = path
        self.from_start = from_start
        self.tz = tz
        self.hooks = hooks if hooks is not None else []  # shared: the daemon adds to it
        self.current: OpenFile | None = None
        self.draining: list[OpenFile] = []
        self.encode = MetadataEncoder()
        self.started = False
        self.seen_before = False
        self.behind = False  # the last poll left data unread: batch rather than flush now
        self.events = 0
        self.stats = InputStats()  # lines with invalid UTF-8, over-long lines cut
        self.errors = 0

    # ---- opening ------------------------------------------------------------------------------
    def _open(self, path: str) -> OpenFile | None:
        try:
            raw = open(path, "rb")  # noqa: SIM115 - kept open across polls
        except OSError:
            return None
        st = os.fstat(raw.fileno())
        magic = raw.read(2)
        raw.seek(0)
        gz = magic == b"\x1f\x8b"
        stream: BinaryIO = gzip.GzipFile(fileobj=raw) if gz else raw  # type: ignore[assignment]
        return OpenFile(path, stream, st.st_dev, st.st_ino, gz=gz, size=st.st_size)

    def _identify(self, f: OpenFile, *, new_file: bool) -> bool:
        """Fingerprint the first line and look up the committed offset; False if not yet."""
        if f.identity is not None:
            return True
        f.stream.seek(0)
        head = f.stream.read(FINGERPRINT_BYTES)
        nl = head.find(b"\n")
        if nl < 0 and len(head) < FINGERPRINT_BYTES:
            return False  # no complete first line yet
        first = head[: nl + 1] if nl >= 0 else head
        identity = identity_of(first)
        # store calls first: if they fail (locked, disk full) the file stays unidentified
        known = self.store.source_offset(identity)
        file_id, committed = self.store.open_source(
            identity, f.path, "gzip" if f.gz else "file", f.dev, f.ino)
        f.identity, f.head, f.file_id = identity, first, file_id
        mtime = datetime.fromtimestamp(os.fstat(f.stream.fileno()).st_mtime, UTC) \
            if not f.gz else None
        f.parser = LineParser(self.rules, HeaderParser(tz=self.tz, reference=mtime))
        if known is None and not new_file and not self.from_start and not f.gz:
            # first sight of a file that was already there: follow from its end
            size = os.fstat(f.stream.fileno()).st_size
            f.offset = self._line_start_before(f, size)
            self.store.write_batch(f.file_id, [], [], f.offset, 0, size)
            log.info("following %s from its end (byte %d)", f.path, f.offset)
        else:
            f.offset = committed
        return True

    @staticmethod
    def _line_start_before(f: OpenFile, size: int) -> int:
        """The offset just after the last newline at or before `size`."""
        pos = size
        while pos > 0:
            start = max(0, pos - 65536)
            f.stream.seek(start)
            chunk = f.stream.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                return start + nl + 1
            pos = start
        return 0

    def start(self) -> None:
        """Catch up on what happened while nobody was reading, then open the live file.

        Rotated siblings with a known identity are drained from their committed offset. If
        this path was followed before, siblings never seen but written since then were
        rotated while the daemon was down: they are read whole, as is a live file never seen.
        """
        self.started = True
        since = self.store.path_family_updated(self.path)
        self.seen_before = since is not None
        for sibling in self._rotated_siblings():
            f = self._open(sibling)
            if f is None:
                continue
            if not self._peek_identity(f):
                f.close()
                continue
            known = self.store.source_offset(f.identity)  # type: ignore[arg-type]
            fresh = since is not None and _mtime_text(sibling) >= since
            if known is None and not fresh:
                f.close()  # history from before Logly followed this path
                continue
            f.identity = None
            self._identify(f, new_file=True)
            f.draining_since = time.monotonic() - DRAIN_GRACE  # finish promptly
            self.draining.append(f)
            log.info("catching up on %s from byte %d", sibling, f.offset)
        self.current = self._open(self.path)
        if self.current is not None:
            self._identify(self.current, new_file=self.seen_before)

    def _peek_identity(self, f: OpenFile) -> bool:
        f.stream.seek(0)
        head = f.stream.read(FINGERPRINT_BYTES)
        nl = head.find(b"\n")
        if nl < 0 and len(head) < FINGERPRINT_BYTES:
            return False
        f.identity = identity_of(head[: nl + 1] if nl >= 0 else head)
        return True

    def _rotated_siblings(self) -> list[str]:
        out = [p for p in glob.glob(glob.escape(self.path) + ".*") if p != self.path]
        out += [p for p in glob.glob(glob.escape(self.path) + "-*") if p != self.path]
        # oldest first (auth.log.2 before auth.log.1), so lines are stored in order
        return sorted(set(out), key=lambda p: os.stat(p).st_mtime if os.path.exists(p) else 0)

    # ---- reading ------------------------------------------------------------------------------
    def poll(self, max_pending: int) -> int:
        """Read what is new; returns the number of lines read (0: nothing to do now)."""
        if not self.started:
            self.start()
        n = 0
        self.behind = False
        for f in list(self.draining):
            n += self._read(f, max_pending, final=self._drain_done(f))
            if self._drain_done(f) and not f.pending.lines and self._at_end(f):
                f.close()
                self.draining.remove(f)
        self._check_live()
        if self.current is not None:
            n += self._read(self.current, max_pending, final=False)
        return n

    def _drain_done(self, f: OpenFile) -> bool:
        return f.draining_since is not None and \
            time.monotonic() - max(f.draining_since, f.last_growth) >= DRAIN_GRACE

    def _at_end(self, f: OpenFile) -> bool:
        if f.stream.closed:
            return True
        if f.gz:
            return f.stream.read(1) == b""
        return f.offset >= os.fstat(f.stream.fileno()).st_size

    def _check_live(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        cur = self.current
        if cur is None:
            if st is not None:
                self.current = self._open(self.path)
                if self.current is not None:
                    self._identify(self.current, new_file=True)
            return
        if st is None or (st.st_dev, st.st_ino) != (cur.dev, cur.ino):
            # renamed away (or deleted): keep reading the old inode until it is quiet
            cur.draining_since = time.monotonic()
            self.draining.append(cur)
            self.current = None
            log.info("%s was rotated; draining the old file", self.path)
            if st is not None:
                self.current = self._open(self.path)
                if self.current is not None:
                    self._identify(self.current, new_file=True)
            return
        if cur.identity is None:
            return
        if st.st_size < cur.offset:
            self._truncated(cur)
        elif st.st_mtime_ns != cur.mtime_ns and not cur.gz:
            cur.mtime_ns = st.st_mtime_ns
            try:
                first = os.pread(cur.stream.fileno(), len(cur.head), 0)
            except OSError:
                return
            if first != cur.head:  # truncated and refilled past our offset between polls
                self._truncated(cur)

    def _truncated(self, cur: OpenFile) -> None:
        """Copytruncate: recover the tail from the copy, then start the file over."""
        log.info("%s was truncated at byte %d", self.path, cur.offset)
        for sibling in self._rotated_siblings():
            f = self._open(sibling)
            if f is None:
                continue
            if self._peek_identity(f) and f.identity == cur.identity:
                f.identity = None
                self._identify(f, new_file=False)
                f.offset = max(f.offset, cur.offset)
                f.draining_since = time.monotonic() - DRAIN_GRACE
                # what is already parsed but not stored belongs to this identity too
                f.pending = cur.pending
                self.draining.append(f)
                break
            f.close()
        else:
            if cur.pending.lines:
                self.draining.append(_frozen(cur))
        cur.close()
        self.current = self._open(self.path)
        if self.current is not None:
            self._identify(self.current, new_file=True)

    def _read(self, f: OpenFile, max_pending: int, *, final: bool) -> int:
        if f.stream.closed:
            return 0
        if f.identity is None and not self._identify(f, new_file=True):
            return 0
        room = max_pending - f.pending.lines
        if room <= 0:
            return 0
        f.stream.seek(f.offset)
        data = f.stream.read(READ_BYTES)
        if not data:
            return 0
        if len(data) == READ_BYTES:
            self.behind = True
        f.last_growth = time.monotonic()
        if f.cutting:
            nl = data.find(b"\n")
            f.offset += len(data) if nl < 0 else nl + 1
            if nl < 0:
                return 0
            f.cutting = False
            data = data[nl + 1:]
            if not data:
                return 0
        end = data.rfind(b"\n")
        synthetic = False
        if end < 0:
            if final or len(data) >= MAX_LINE_BYTES:
                # a closed file's last line, or an endless one: take it as it is (the endless
                # one cut: the rest of it is skipped)
                data += b"\n"
                end = len(data) - 1
                synthetic = True
                if not final:
                    f.cutting = True
                    self.stats.truncated += 1
            else:
                return 0  # a partial line waits for its newline
        parse = f.parser.parse  # type: ignore[union-attr]
        pend = f.pending
        pos = f.offset
        file_id = f.file_id
        row = self.encode.row
        stats = self.stats
        lines = data[: end + 1].split(b"\n")
        lines.pop()
        if len(lines) > room:
            lines = lines[:room]
            self.behind = True
        for raw in lines:
            nxt = pos + len(raw) + 1
            if len(raw) > MAX_LINE_BYTES:
                text = decode_line(raw, stats)
            else:
                try:  # the common case inline, as read_lines does: once per followed line
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = decode_line(raw, stats)
            out = parse(text, f.path, pos)
            ev = out.event
            if ev is not None:
                pend.rows.append(row(ev, file_id, pos))
            else:
                pend.unparsed.append((pos, out.reason or "unparsed", text))
            if not pend.lines:
                pend.since = time.monotonic()
            pend.lines += 1
            pos = nxt
        f.offset = pos - 1 if synthetic and len(lines) == 1 else pos
        return len(lines)

    # ---- storing ------------------------------------------------------------------------------
    def due(self, batch_lines: int, batch_seconds: float) -> bool:
        """Flush when caught up (lowest latency), else when the batch is full or old."""
        if not self.behind and self.pending_lines():
            return True
        now = time.monotonic()
        return any(f.pending.lines and (f.pending.lines >= batch_lines
                                        or now - f.pending.since >= batch_seconds)
                   for f in self._files())

    def flush(self) -> int:
        """Store every pending batch with its offset; raises on a store error (kept pending)."""
        stored = 0
        for f in self._files():
            if not f.pending.lines or f.file_id is None:
                continue
            p = f.pending
            size = f.size
            if not f.gz:
                with contextlib.suppress(OSError, ValueError):
                    size = os.fstat(f.stream.fileno()).st_size
            stored += self.store.write_batch(f.file_id, p.rows, p.unparsed, f.offset, p.lines,
                                             size, self.hooks)
            self.events += len(p.rows)
            f.pending = Pending()
            f.size = size
        return stored

    def pending_lines(self) -> int:
        return sum(f.pending.lines for f in self._files())

    def set_rules(self, rules: RuleSet) -> None:
        self.rules = rules
        for f in self._files():
            if f.parser is not None:
                f.parser.rules = rules

    def _files(self) -> list[OpenFile]:
        return [*self.draining, *([self.current] if self.current else [])]

    def lag_bytes(self) -> int:
        lag = 0
        for f in self._files():
            if f.gz:
                continue
            with contextlib.suppress(OSError, ValueError):
                lag += max(0, os.fstat(f.stream.fileno()).st_size - f.offset)
        return lag

    def close(self) -> None:
        for f in self._files():
            f.close()


def _mtime_text(path: str) -> str:
    try:
        ts = os.stat(path).st_mtime
    except OSError:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _frozen(f: OpenFile) -> OpenFile:
    """A truncated file with unflushed lines and no copy: keep only the pending batch."""
    f.draining_since = time.monotonic() - DRAIN_GRACE
    return f


def expand(pattern: str) -> list[str]:
    """The files a configured path names now (a glob may name none yet)."""
    if glob.has_magic(pattern):
        return sorted(p for p in glob.glob(pattern)
                      if os.path.isfile(p) and not _looks_rotated(p))
    return [pattern]


def _looks_rotated(path: str) -> bool:
    name = os.path.basename(path)
    return name.endswith((".gz", ".xz", ".bz2", ".zst")) or \
        any(part.isdigit() for part in name.split(".")[1:])
