"""sqlmodel models mirroring schema.sql (tests/test_store.py proves they agree).

They serve typed reads and documentation; bulk writes go through SQLAlchemy Core with
`executemany`, never one ORM object per row.
"""

from __future__ import annotations

from sqlalchemy import Column, Integer, String, UniqueConstraint
from sqlmodel import Field, SQLModel


def _offset() -> Column:
    return Column("offset", Integer)


class Metadata(SQLModel, table=True):
    __tablename__ = "metadata"
    key: str = Field(primary_key=True)
    value: str


class SourceFile(SQLModel, table=True):
    __tablename__ = "source_files"
    id: int | None = Field(default=None, primary_key=True)
    identity: str = Field(unique=True)
    path: str
    kind: str = "file"
    device: int | None = None
    inode: int | None = None
    offset: int = Field(default=0, sa_column=Column("offset", Integer, nullable=False))
    size: int | None = None
    lines: int = 0
    events: int = 0
    unparsed: int = 0
    first_seen: str
    updated: str
    cursor: str | None = None


class LogEventRow(SQLModel, table=True):
    __tablename__ = "log_events"
    id: int | None = Field(default=None, primary_key=True)
    timestamp: str = Field(index=True)
    source: str
    host: str | None = None
    program: str | None = None
    pid: int | None = None
    level: str = "info"
    service: str | None = None
    action: str
    message: str
    ip_address: str | None = None
    user: str | None = None
    port: int | None = None
    metadata_: str | None = Field(default=None, sa_column=Column("metadata", String, nullable=True))
    file_id: int | None = Field(default=None, foreign_key="source_files.id")
    offset: int | None = Field(default=None, sa_column=_offset())
    trace_id: int | None = Field(default=None, foreign_key="event_traces.id")


class UnparsedLine(SQLModel, table=True):
    __tablename__ = "unparsed_lines"
    id: int | None = Field(default=None, primary_key=True)
    file_id: int | None = Field(default=None, foreign_key="source_files.id")
    offset: int | None = Field(default=None, sa_column=_offset())
    reason: str
    line: str
    seen: str


class SystemMetric(SQLModel, table=True):
    __tablename__ = "system_metrics"
    id: int | None = Field(default=None, primary_key=True)
    timestamp: str
    cpu_percent: float | None = None
    memory_percent: float | None = None
    memory_used: int | None = None
    disk_percent: float | None = None
    disk_read_bps: float | None = None
    disk_write_bps: float | None = None
    load_1: float | None = None
    load_5: float | None = None
    load_15: float | None = None


class NetworkMetric(SQLModel, table=True):
    __tablename__ = "network_metrics"
    id: int | None = Field(default=None, primary_key=True)
    timestamp: str
    interface: str
    bytes_sent_ps: float | None = None
    bytes_recv_ps: float | None = None
    packets_sent_ps: float | None = None
    packets_recv_ps: float | None = None
    errors_in: int | None = None
    errors_out: int | None = None
    drops_in: int | None = None
    drops_out: int | None = None
    connections: str | None = None


class _Aggregate(SQLModel):
    id: int | None = Field(default=None, primary_key=True)
    source: str
    action: str
    event_count: int = 0
    unique_ips: int = 0
    unique_users: int = 0
    cpu_avg: float | None = None
    cpu_max: float | None = None
    memory_avg: float | None = None
    memory_max: float | None = None
    net_bytes_sent: int | None = None
    net_bytes_recv: int | None = None


class HourlyAggregate(_Aggregate, table=True):
    __tablename__ = "hourly_aggregates"
    __table_args__ = (UniqueConstraint("hour", "source", "action"),)
    hour: str


class DailyAggregate(_Aggregate, table=True):
    __tablename__ = "daily_aggregates"
    __table_args__ = (UniqueConstraint("day", "source", "action"),)
    day: str


class EventTrace(SQLModel, table=True):
    __tablename__ = "event_traces"
    id: int | None = Field(default=None, primary_key=True)
    title: str
    severity: str
    pattern: str | None = None
    first_seen: str
    last_seen: str
    ip_address: str | None = None
    user: str | None = None
    host: str | None = None
    event_count: int = 0
    status: str = "open"
    causality: str | None = None
    created: str
    updated: str


class ProcessTrace(SQLModel, table=True):
    __tablename__ = "process_traces"
    id: int | None = Field(default=None, primary_key=True)
    trace_id: int = Field(foreign_key="event_traces.id")
    event_id: int | None = Field(default=None, foreign_key="log_events.id")
    pid: int
    ppid: int | None = None
    uid: int | None = None
    comm: str | None = None
    exe: str | None = None
    cmdline: str | None = None
    container: str | None = None
    start: str | None = None
    exit: str | None = None
    exit_code: int | None = None
    syscalls: str | None = None


class NetworkTrace(SQLModel, table=True):
    __tablename__ = "network_traces"
    id: int | None = Field(default=None, primary_key=True)
    trace_id: int = Field(foreign_key="event_traces.id")
    event_id: int | None = Field(default=None, foreign_key="log_events.id")
    pid: int | None = None
    local_address: str | None = None
    local_port: int | None = None
    remote_address: str | None = None
    remote_port: int | None = None
    states: str | None = None
    first_seen: str | None = None
    last_seen: str | None = None
    bytes_sent: int | None = None
    bytes_recv: int | None = None


class ErrorTrace(SQLModel, table=True):
    __tablename__ = "error_traces"
    id: int | None = Field(default=None, primary_key=True)
    trace_id: int | None = Field(default=None, foreign_key="event_traces.id")
    event_id: int | None = Field(default=None, foreign_key="log_events.id")
    timestamp: str
    error_type: str
    category: str
    severity: str
    file: str | None = None
    line_no: int | None = None
    code: str | None = None
    hints: str | None = None
    suggestions: str | None = None


class IpReputation(SQLModel, table=True):
    __tablename__ = "ip_reputation"
    address: str = Field(primary_key=True)
    score: float = 0.0
    verdict: str = "unknown"
    first_seen: str | None = None
    last_seen: str | None = None
    evidence: str | None = None
    counts: str | None = None
    users: str | None = None
    geo: str | None = None
    asn: str | None = None
    blocklists: str | None = None
    updated: str
    base_score: float = 0.0
    last_attack: str | None = None
    net: str | None = None


class TracePattern(SQLModel, table=True):
    __tablename__ = "trace_patterns"
    id: int | None = Field(default=None, primary_key=True)
    name: str
    signature: str = Field(unique=True)
    description: str | None = None
    severity: str
    occurrences: int = 0
    first_seen: str
    last_seen: str
