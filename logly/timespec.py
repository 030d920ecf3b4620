"""Time arguments as users type them: `24h`, `7d`, `90m`, `2026-11-20`, ISO 8601 with zone."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from logly.errors import UsageError

_REL = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def to_storage(dt: datetime) -> str:
    """The store's timestamp text: UTC, microseconds, `Z` (fixed width, so it sorts)."""
    if dt.tzinfo is None:
        dt = dt.astimezone()  # naive input means the local zone
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str, now: datetime | None = None) -> str:
    """`24h` (ago), `2026-11-20` (local midnight) or ISO 8601 → storage text."""
    now = now or datetime.now(UTC)
    m = _REL.match(text)
    if m:
        return to_storage(now - timedelta(**{_UNITS[m[2]]: int(m[1])}))
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"cannot read time {text!r}",
            hint="use a duration like 24h, 7d, 30m or a date/time like 2026-11-20T10:00",
        ) from None
    return to_storage(dt)
