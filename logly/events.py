"""LogEvent, the one record every stage passes on, and the action vocabulary.

The action names are a contract (ARCHITECTURE.md): scripts and correlation rules match on them,
so they are constants (logly/actions.py, re-exported here) and rule files are checked against
this set at load time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from logly.actions import ACTIONS, ATTACK_ACTIONS

__all__ = ["ACTIONS", "ATTACK_ACTIONS", "EVENT_COLUMNS", "LEVELS", "LogEvent"]

LEVELS: tuple[str, ...] = ("debug", "info", "notice", "warning", "error", "critical")

# Column order shared by the parser's row output, the store's insert and the JSON contract.
EVENT_COLUMNS: tuple[str, ...] = (
    "id",
    "timestamp",
    "source",
    "host",
    "program",
    "pid",
    "level",
    "service",
    "action",
    "message",
    "ip_address",
    "user",
    "port",
    "metadata",
    "path",
    "offset",
    "trace_id",
)


@dataclass(slots=True)
class LogEvent:
    """One parsed log line. `timestamp` is ISO 8601 UTC text with microseconds and `Z`."""

    timestamp: str
    source: str
    message: str
    action: str = "info"
    level: str = "info"
    host: str | None = None
    program: str | None = None
    pid: int | None = None
    service: str | None = None
    ip_address: str | None = None
    user: str | None = None
    port: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    offset: int | None = None
    trace_id: int | None = None
    id: int | None = None

    @property
    def is_attack(self) -> bool:
        return self.action in ATTACK_ACTIONS and not self.metadata.get("duplicate_of")

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in EVENT_COLUMNS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=False)
