"""Reading inputs as (byte offset, line) pairs: plain files, .gz files and standard input.

An input is known by an identity that survives renames and rotation to `.1` or `.gz`: a hash of
its first line (as fail2ban does), so re-reading any copy of the same log starts from the
committed offset and stores nothing twice. Offsets count bytes of the (decompressed) stream.
Lines are split on `\\n` only, decoded as UTF-8 with invalid bytes replaced (and counted),
and cut at MAX_LINE_BYTES; reading always resumes at the next line.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
MAX_LINE_BYTES = 1 << 20  # past this a line is cut (the rest is skipped, never parsed)
FINGERPRINT_BYTES = 4096


@dataclass
class InputStats:
    invalid_utf8: int = 0
    truncated: int = 0


@dataclass
class Input:
    path: str  # as given; "-" for standard input
    kind: str  # "file", "gzip", "stdin"
    stream: BinaryIO
    mtime: datetime | None
    device: int | None = None
    inode: int | None = None
    size: int | None = None
    head: bytes = b""  # the first line (up to FINGERPRINT_BYTES), already read from stream
    stats: InputStats = field(default_factory=InputStats)

    @property
    def identity(self) -> str:
        return identity_of(self.head)

    def close(self) -> None:
        self.stream.close()


def identity_of(first_line: bytes) -> str:
    return hashlib.sha256(first_line[:FINGERPRINT_BYTES]).hexdigest()[:32]


def open_input(path: str) -> Input:
    """Open a path (or "-") and read its first line for the identity; raises OSError."""
    if path == "-":
        # a private descriptor: a forked parser process closes sys.stdin, not this
        stream: BinaryIO = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
        inp = Input("-", "stdin", stream, None)
    else:
        p = Path(path)
        st = p.stat()
        if not p.is_file():
            raise IsADirectoryError(f"not a regular file: {path}")
        raw = open(p, "rb")  # noqa: SIM115 - closed by Input.close
        magic = raw.read(2)
        raw.seek(0)
        if magic == b"\x1f\x8b":
            stream = gzip.GzipFile(fileobj=raw)  # type: ignore[assignment]
            kind = "gzip"
        else:
            stream, kind = raw, "file"
        inp = Input(path, kind, stream, datetime.fromtimestamp(st.st_mtime, UTC),
                    st.st_dev, st.st_ino, st.st_size)
    inp.head = _peek_line(inp)
    return inp


def _peek_line(inp: Input) -> bytes:
    """Read the first line for the fingerprint; seekable inputs rewind, stdin keeps a buffer."""
    if inp.kind == "stdin":
        buffered = io.BufferedReader(inp.stream, buffer_size=CHUNK)  # type: ignore[arg-type]
        head = buffered.peek(FINGERPRINT_BYTES)[:FINGERPRINT_BYTES]
        inp.stream = buffered  # type: ignore[assignment]
    else:
        head = inp.stream.read(FINGERPRINT_BYTES)
        inp.stream.seek(0)
    nl = head.find(b"\n")
    return head[: nl + 1] if nl >= 0 else head


def read_lines(inp: Input, start: int = 0,
               end: int | None = None) -> Iterator[tuple[int, int, str]]:
    """Yield (offset, next offset, text) per line from byte `start`; the last even without `\\n`.

    With `end` (a line start in a plain file), reading stops there: a parser process given one
    block of the file reads that block only.
    """
    stream = inp.stream
    pos = 0
    if start:
        if inp.kind == "file":
            stream.seek(start)
            pos = start
        else:  # compressed or piped: read through to the checkpoint
            while pos < start:
                skipped = stream.read(min(CHUNK, start - pos))
                if not skipped:
                    return
                pos += len(skipped)
    stats = inp.stats
    carry = b""
    carry_dropped = 0  # bytes of an over-long line past MAX_LINE_BYTES
    left = None if end is None else max(0, end - pos)  # bytes the block still holds
    while left is None or left > 0:
        chunk = stream.read(CHUNK if left is None else min(CHUNK, left))
        if not chunk:
            break
        if left is not None:
            left -= len(chunk)
        if carry or carry_dropped:
            nl = chunk.find(b"\n")
            take = max(0, MAX_LINE_BYTES - len(carry))
            if nl < 0:
                carry += chunk[:take]
                carry_dropped += max(0, len(chunk) - take)
                continue
            first = chunk[:nl]
            total = len(carry) + carry_dropped + len(first)
            dropped = carry_dropped + max(0, len(first) - take)
            yield pos, pos + total + 1, _decode(carry + first[:take], stats, dropped)
            pos += total + 1
            carry, carry_dropped = b"", 0
            chunk = chunk[nl + 1:]
        parts = chunk.split(b"\n")
        tail = parts.pop()
        for raw in parts:
            nxt = pos + len(raw) + 1
            if len(raw) > MAX_LINE_BYTES:
                text = decode_line(raw, stats)
            else:
                try:  # the common case inline: this runs once per line of every input
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = decode_line(raw, stats)
            yield pos, nxt, text
            pos = nxt
        if len(tail) > MAX_LINE_BYTES:
            carry_dropped = len(tail) - MAX_LINE_BYTES
            carry = tail[:MAX_LINE_BYTES]
        else:
            carry = tail
    if carry or carry_dropped:
        yield pos, pos + len(carry) + carry_dropped, _decode(carry, stats, carry_dropped)


def line_start_at_or_after(inp: Input, offset: int) -> int | None:
    """The offset of the first line that starts at or after `offset` in a plain file (None: none
    before the end). Reads with pread, so the stream's position is left alone."""
    if offset <= 0:
        return 0
    fd = inp.stream.fileno()
    pos = offset - 1  # a line starts at `offset` when the byte before it is a newline
    while True:
        buf = os.pread(fd, 1 << 16, pos)
        if not buf:
            return None
        nl = buf.find(b"\n")
        if nl >= 0:
            return pos + nl + 1
        pos += len(buf)


def end_offset(inp: Input) -> int | None:
    return inp.size if inp.kind == "file" else None


def decode_line(raw: bytes, stats: InputStats) -> str:
    """One line's text: cut to MAX_LINE_BYTES, invalid UTF-8 replaced, both counted in `stats`."""
    if len(raw) > MAX_LINE_BYTES:
        return _decode(raw[:MAX_LINE_BYTES], stats, len(raw) - MAX_LINE_BYTES)
    return _decode(raw, stats, 0)


def _decode(raw: bytes, stats: InputStats, dropped: int) -> str:
    if dropped:
        stats.truncated += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.invalid_utf8 += 1
        return raw.decode("utf-8", "replace")
