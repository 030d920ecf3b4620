"""journald as a source: structured entries from `journalctl -o json`, exactly once by cursor.

A default Debian 12 server logs sshd, sudo, PAM and the kernel only to the journal. Entries
become the same LogEvents as syslog lines and go through the same message rules; the fields
journald itself records (`_PID`, `_UID`, `_SYSTEMD_UNIT`, `_COMM`, `_TRANSPORT`) are trusted
and kept in metadata, and `_PID` wins over anything a message claims.

Evidence: an event's `path` is the journal source (`journal:local`, `journal:/srv/x.journal`)
and its `offset` the entry's sequence number (`i=` of its cursor); `metadata.cursor` holds the
full cursor (`journalctl --cursor=…` shows the entry). The source's last cursor is committed in
the same transaction as its events; a restart continues with `--after-cursor`.

journalctl is run without a shell, with the match filters as separate arguments.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from logly.ingest import IngestSummary, MetadataEncoder
from logly.parsers.journal_entry import entry_outcome, seqnum
from logly.parsers.line import LineParser, Outcome
from logly.parsers.rules import RuleSet
from logly.store.sqlite import BatchHook, SQLiteStore

log = logging.getLogger("logly.journal")

# Auth-relevant entries: OR of these (journalctl ANDs different fields, so they are joined
# with "+"). The kernel transport carries firewall drops.
DEFAULT_MATCHES = (
    "_COMM=sshd", "_COMM=sshd-session", "_COMM=sudo", "_COMM=su", "_COMM=login",
    "_COMM=useradd", "_COMM=userdel", "_COMM=usermod", "_COMM=groupadd", "_COMM=passwd",
    "_COMM=chpasswd", "_COMM=systemd-logind", "_COMM=cron", "_COMM=fail2ban-server",
    "SYSLOG_FACILITY=4", "SYSLOG_FACILITY=10", "_TRANSPORT=kernel",
)
class JournalUnavailable(RuntimeError):
    """No journal can be read here (no journalctl, no permission, no such file)."""


@dataclass
class JournalQuery:
    matches: list[str] = field(default_factory=lambda: list(DEFAULT_MATCHES))
    files: list[str] = field(default_factory=list)
    directory: str | None = None
    since: str | None = None
    until: str | None = None

    @property
    def location(self) -> str:
        if self.files:
            return "journal:" + ",".join(self.files)
        return f"journal:{self.directory}" if self.directory else "journal:local"

    @property
    def identity(self) -> str:
        """One checkpoint per place and filter: two match sets do not share a cursor."""
        key = json.dumps([self.location, sorted(self.matches)])
        return "journal-" + hashlib.sha256(key.encode()).hexdigest()[:24]

    def args(self, *, after_cursor: str | None = None, follow: bool = False,
             from_end: bool = False) -> list[str]:
        exe = shutil.which("journalctl")
        if exe is None:
            raise JournalUnavailable("journalctl is not installed (Debian package systemd)")
        args = [exe, "-o", "json", "--no-pager", "--quiet"]
        for f in self.files:
            args += ["--file", f]
        if self.directory:
            args += ["--directory", self.directory]
        if after_cursor:
            args += ["--after-cursor", after_cursor]
        else:
            if self.since:
                args += ["--since", self.since]
            if from_end:
                args += ["--lines", "0"]
            elif follow:
                args.append("--no-tail")  # --follow alone would start with the last 10
        if self.until:
            args += ["--until", self.until]
        if follow:
            args.append("--follow")
        for i, m in enumerate(self.matches):
            if "=" not in m or m.startswith("-"):
                raise ValueError(f"not a journal match: {m!r} (FIELD=VALUE)")
            if i:
                args.append("+")
            args.append(m)
        return args


def _die_with_parent() -> None:
    """journalctl --follow must not outlive a daemon killed with SIGKILL."""
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def read_entries(args: list[str]) -> Iterator[dict]:
    """Entries from a finite journalctl run; a failing journalctl raises JournalUnavailable."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield entry
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        code = proc.wait()
    if code != 0:
        raise JournalUnavailable(err.strip().splitlines()[-1] if err.strip()
                                 else f"journalctl exited with {code}")


def ingest_journal(
    store: SQLiteStore, rules: RuleSet, query: JournalQuery, *,
    batch_lines: int = 20_000, hooks: list[BatchHook] | None = None,
) -> IngestSummary:
    """Backfill from the journal, resuming after the committed cursor."""
    t0 = time.perf_counter()
    path = query.location
    summary = IngestSummary(path)
    file_id, _ = store.open_source(query.identity, path, "journal")
    after = store.source_cursor(query.identity)
    parser = LineParser(rules)
    batch = JournalBatch(file_id, path)
    for entry in read_entries(query.args(after_cursor=after)):
        out = entry_outcome(parser, entry, path)
        batch.add(out, entry)
        if out.rule is not None:
            summary.matched += 1
        if batch.lines >= batch_lines:
            summary.events += batch.flush(store, hooks or [])
    summary.events += batch.flush(store, hooks or [])
    summary.lines = batch.total_lines
    summary.unparsed = batch.total_unparsed
    summary.unparsed_reasons = batch.reasons
    summary.seconds = time.perf_counter() - t0
    return summary


class JournalBatch:
    """Pending rows of one journal source and the cursor they reach."""

    def __init__(self, file_id: int, path: str) -> None:
        self.file_id, self.path = file_id, path
        self.rows: list[tuple] = []
        self.unparsed: list[tuple[int, str, str]] = []
        self.cursor: str | None = None
        self.offset = 0
        self.lines = self.total_lines = self.total_unparsed = 0
        self.reasons: dict[str, int] = {}
        self.since = 0.0
        self.encode = MetadataEncoder()

    def add(self, out: Outcome, entry: dict) -> None:
        cursor = entry.get("__CURSOR")
        if isinstance(cursor, str):
            self.cursor = cursor
            self.offset = seqnum(cursor) or self.offset
        if not self.lines:
            self.since = time.monotonic()
        self.lines += 1
        ev = out.event
        if ev is not None:
            self.rows.append(self.encode.row(ev, self.file_id, ev.offset))
        else:
            reason = out.reason or "unparsed"
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
            self.unparsed.append((self.offset, reason, json.dumps(entry)[:4096]))

    def flush(self, store: SQLiteStore, hooks: list[BatchHook]) -> int:
        if not self.lines:
            return 0
        n = store.write_batch(self.file_id, self.rows, self.unparsed, self.offset, self.lines,
                              None, hooks, cursor=self.cursor)
        self.total_lines += self.lines
        self.total_unparsed += len(self.unparsed)
        self.rows, self.unparsed, self.lines = [], [], 0
        return n


REOPEN_IDLE_SECONDS = 15.0


class JournalFollower:
    """The daemon's journal source: `journalctl --follow` from the committed cursor."""

    def __init__(self, store: SQLiteStore, rules: RuleSet, query: JournalQuery, *,
                 from_start: bool = False, hooks: list[BatchHook] | None = None) -> None:
        self.store, self.rules, self.query = store, rules, query
        self.from_start = from_start
        self.hooks = hooks if hooks is not None else []  # shared: the daemon adds to it
        self.path = query.location
        self.proc: subprocess.Popen | None = None
        self.buf = b""
        self.batch: JournalBatch | None = None
        self.parser = LineParser(rules)
        self.events = 0
        self.behind = False
        self.unavailable: str | None = None
        self._retry_at = 0.0
        self._heard = time.monotonic()  # when journalctl last wrote anything
        self.reopened = 0

    def _start(self) -> None:
        if time.monotonic() < self._retry_at:
            return
        file_id, _ = self.store.open_source(self.query.identity, self.path, "journal")
        after = self.store.source_cursor(self.query.identity)
        try:
            args = self.query.args(after_cursor=after, follow=True,
                                   from_end=after is None and not self.from_start)
        except JournalUnavailable as exc:
            self._unavailable(str(exc))
            return
        self.batch = JournalBatch(file_id, self.path)
        self.buf = b""  # a half line from an earlier journalctl is read again after the cursor
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        os.set_blocking(self.proc.stdout.fileno(), False)  # type: ignore[union-attr]
        log.info("following the journal (%s)%s", self.path,
                 " after the committed cursor" if after else "")

    def _unavailable(self, why: str) -> None:
        if self.unavailable != why:  # say it once, not at every retry
            log.warning("journal not readable: %s; retrying every 30 s", why)
        self.unavailable = why
        self._retry_at = time.monotonic() + 30

    def poll(self, max_pending: int) -> int:
        if self.proc is None:
            self._start()
            if self.proc is None:
                return 0
        assert self.proc.stdout is not None and self.batch is not None
        if self.proc.poll() is not None and not select.select([self.proc.stdout], [], [], 0)[0]:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            self.proc = None
            self._unavailable(err.strip().splitlines()[-1] if err.strip() else "journalctl "
                              "stopped")
            return 0
        n = 0
        self.behind = False
        if not self.batch.lines and time.monotonic() - self._heard > REOPEN_IDLE_SECONDS:
            # `journalctl --follow` waits for inotify, and a writer that only touches its
            # mmap-ed file (journal-remote, a journal copied in) may never send one: re-query
            # from the committed cursor now and then, which costs one process start
            self.close()
            self._heard = time.monotonic()
            self.reopened += 1
            return 0
        while self.batch.lines < max_pending:
            try:
                chunk = self.proc.stdout.read(1 << 20)
            except BlockingIOError:
                chunk = None
            if not chunk:
                break
            self._heard = time.monotonic()
            self.buf += chunk
            *lines, self.buf = self.buf.split(b"\n")
            for raw in lines:
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    self.batch.add(entry_outcome(self.parser, entry, self.path), entry)
                    n += 1
            if len(chunk) == 1 << 20:
                self.behind = True
        self.unavailable = None
        return n

    def due(self, batch_lines: int, batch_seconds: float) -> bool:
        b = self.batch
        if b is None or not b.lines:
            return False
        return not self.behind or b.lines >= batch_lines or \
            time.monotonic() - b.since >= batch_seconds

    def flush(self) -> int:
        if self.batch is None:
            return 0
        n = self.batch.flush(self.store, self.hooks)
        self.events += n
        return n

    def pending_lines(self) -> int:
        return self.batch.lines if self.batch else 0

    def lag_bytes(self) -> int:
        return len(self.buf)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def set_rules(self, rules: RuleSet) -> None:
        self.rules = rules
        self.parser.rules = rules
