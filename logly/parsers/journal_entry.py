"""A journald entry (journalctl's JSON) → the LogEvent a syslog line would give.

Shared by the journal source and by `logly ingest -` when it is fed `journalctl -o json`.
The fields journald records itself (`_PID`, `_UID`, `_SYSTEMD_UNIT`, `_COMM`, `_TRANSPORT`)
are trusted: kept in metadata, and `_PID` wins over any pid the message claims.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from logly.parsers.line import LineParser, Outcome

PRIORITY_LEVELS = ("critical", "critical", "critical", "error", "warning", "notice", "info",
                   "debug")
TRUSTED = ("_UID", "_SYSTEMD_UNIT", "_TRANSPORT", "_COMM", "_EXE")


def message_text(value: object) -> str | None:
    """MESSAGE as text: journald stores non-UTF-8 or binary messages as a byte array."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value).decode("utf-8", "replace")
    return None


def seqnum(cursor: str) -> int | None:
    for part in cursor.split(";"):
        if part.startswith("i="):
            try:
                return int(part[2:], 16)
            except ValueError:
                return None
    return None


def entry_outcome(parser: LineParser, entry: dict, path: str | None,
                  offset: int | None = None) -> Outcome:
    """One journal entry → the same LogEvent a syslog line would give, trusted fields kept."""
    text = message_text(entry.get("MESSAGE"))
    from logly.parsers.line import Outcome

    cursor = entry.get("__CURSOR") if isinstance(entry.get("__CURSOR"), str) else ""
    if offset is None:
        offset = seqnum(cursor)
    if text is None:
        return Outcome(None, reason="journal entry without a MESSAGE")
    try:
        usec = int(entry["__REALTIME_TIMESTAMP"])
        ts = datetime.fromtimestamp(usec // 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S") \
            + f".{usec % 1_000_000:06d}Z"
    except (KeyError, ValueError, OverflowError, OSError):
        return Outcome(None, reason="journal entry without a valid __REALTIME_TIMESTAMP")
    meta: dict = {"cursor": cursor} if cursor else {}
    for key in TRUSTED:
        if isinstance(entry.get(key), str):
            meta[key.lstrip("_").lower()] = entry[key]
    pid_text = entry.get("_PID") or entry.get("SYSLOG_PID")
    pid = int(pid_text) if isinstance(pid_text, str) and pid_text.isdigit() else None
    if isinstance(entry.get("_PID"), str):
        meta["trusted_pid"] = True
    program = entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM")
    if entry.get("_TRANSPORT") == "kernel":
        program = "kernel"
    prio = entry.get("PRIORITY")
    level = PRIORITY_LEVELS[int(prio)] if isinstance(prio, str) and prio.isdigit() \
        and int(prio) < 8 else "info"
    host = entry.get("_HOSTNAME") if isinstance(entry.get("_HOSTNAME"), str) else None
    out = parser.parse_fields(ts, host, program if isinstance(program, str) else None, pid,
                              text.rstrip("\n"), meta, path, offset, level)
    if out.event is not None:
        out.event.source = "journal"
        out.event.pid = pid  # journald's _PID, never a pid the message text claims
    return out


