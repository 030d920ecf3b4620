-- Logly's database. The sqlmodel models in logly/store/models.py mirror this file, and
-- tests/test_store.py checks that they agree. Timestamps are ISO 8601 UTC text with
-- microseconds and a trailing Z ("2026-11-24T10:00:00.000000Z"): fixed width, so text order
-- is time order and range queries use the indexes. JSON columns hold JSON text.

CREATE TABLE IF NOT EXISTS metadata (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);

-- One row per followed or ingested input: the identity that survives renames (device, inode
-- and a fingerprint of the first line) and the committed read position (the checkpoint).
CREATE TABLE IF NOT EXISTS source_files (
    id          INTEGER PRIMARY KEY,
    identity    TEXT NOT NULL UNIQUE,
    path        TEXT NOT NULL,
    kind        TEXT NOT NULL DEFAULT 'file',
    device      INTEGER,
    inode       INTEGER,
    "offset"    INTEGER NOT NULL DEFAULT 0,
    size        INTEGER,
    lines       INTEGER NOT NULL DEFAULT 0,
    events      INTEGER NOT NULL DEFAULT 0,
    unparsed    INTEGER NOT NULL DEFAULT 0,
    first_seen  TEXT NOT NULL,
    updated     TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS log_events (
    id          INTEGER PRIMARY KEY,
    timestamp   TEXT NOT NULL,
    source      TEXT NOT NULL,
    host        TEXT,
    program     TEXT,
    pid         INTEGER,
    level       TEXT NOT NULL DEFAULT 'info',
    service     TEXT,
    action      TEXT NOT NULL,
    message     TEXT NOT NULL,
    ip_address  TEXT,
    user        TEXT,
    port        INTEGER,
    metadata    TEXT,
    file_id     INTEGER REFERENCES source_files(id),
    "offset"    INTEGER,
    trace_id    INTEGER REFERENCES event_traces(id) ON DELETE SET NULL
);
CREATE INDEX IF NOT EXISTS ix_log_events_timestamp ON log_events (timestamp);
CREATE INDEX IF NOT EXISTS ix_log_events_source_timestamp ON log_events (source, timestamp);
CREATE INDEX IF NOT EXISTS ix_log_events_ip_timestamp ON log_events (ip_address, timestamp);
-- Exactly once comes from the checkpoint (source_files.offset, committed with the events), so
-- (file_id, offset) needs no unique index: that index would cost a tenth of ingest speed.

-- Lines that had no recognisable header, kept (capped per input) for `logly rules test`.
CREATE TABLE IF NOT EXISTS unparsed_lines (
    id          INTEGER PRIMARY KEY,
    file_id     INTEGER REFERENCES source_files(id) ON DELETE CASCADE,
    "offset"    INTEGER,
    reason      TEXT NOT NULL,
    line        TEXT NOT NULL,
    seen        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_unparsed_lines_file ON unparsed_lines (file_id, "offset");

CREATE TABLE IF NOT EXISTS system_metrics (
    id              INTEGER PRIMARY KEY,
    timestamp       TEXT NOT NULL,
    cpu_percent     REAL,
    memory_percent  REAL,
    memory_used     INTEGER,
    disk_percent    REAL,
    disk_read_bps   REAL,
    disk_write_bps  REAL,
    load_1          REAL,
    load_5          REAL,
    load_15         REAL
);
CREATE INDEX IF NOT EXISTS ix_system_metrics_timestamp ON system_metrics (timestamp);

CREATE TABLE IF NOT EXISTS network_metrics (
    id              INTEGER PRIMARY KEY,
    timestamp       TEXT NOT NULL,
    interface       TEXT NOT NULL,
    bytes_sent_ps   REAL,
    bytes_recv_ps   REAL,
    packets_sent_ps REAL,
    packets_recv_ps REAL,
    errors_in       INTEGER,
    errors_out      INTEGER,
    drops_in        INTEGER,
    drops_out       INTEGER,
    connections     TEXT
);
CREATE INDEX IF NOT EXISTS ix_network_metrics_timestamp ON network_metrics (timestamp);

CREATE TABLE IF NOT EXISTS hourly_aggregates (
    id              INTEGER PRIMARY KEY,
    hour            TEXT NOT NULL,
    source          TEXT NOT NULL,
    action          TEXT NOT NULL,
    event_count     INTEGER NOT NULL DEFAULT 0,
    unique_ips      INTEGER NOT NULL DEFAULT 0,
    unique_users    INTEGER NOT NULL DEFAULT 0,
    cpu_avg         REAL,
    cpu_max         REAL,
    memory_avg      REAL,
    memory_max      REAL,
    net_bytes_sent  INTEGER,
    net_bytes_recv  INTEGER,
    UNIQUE (hour, source, action)
);

CREATE TABLE IF NOT EXISTS daily_aggregates (
    id              INTEGER PRIMARY KEY,
    day             TEXT NOT NULL,
    source          TEXT NOT NULL,
    action          TEXT NOT NULL,
    event_count     INTEGER NOT NULL DEFAULT 0,
    unique_ips      INTEGER NOT NULL DEFAULT 0,
    unique_users    INTEGER NOT NULL DEFAULT 0,
    cpu_avg         REAL,
    cpu_max         REAL,
    memory_avg      REAL,
    memory_max      REAL,
    net_bytes_sent  INTEGER,
    net_bytes_recv  INTEGER,
    UNIQUE (day, source, action)
);

CREATE TABLE IF NOT EXISTS event_traces (
    id          INTEGER PRIMARY KEY,
    title       TEXT NOT NULL,
    severity    TEXT NOT NULL,
    pattern     TEXT,
    first_seen  TEXT NOT NULL,
    last_seen   TEXT NOT NULL,
    ip_address  TEXT,
    user        TEXT,
    host        TEXT,
    event_count INTEGER NOT NULL DEFAULT 0,
    status      TEXT NOT NULL DEFAULT 'open',
    causality   TEXT,
    created     TEXT NOT NULL,
    updated     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_event_traces_last_seen ON event_traces (last_seen);
CREATE INDEX IF NOT EXISTS ix_event_traces_ip ON event_traces (ip_address, last_seen);

CREATE TABLE IF NOT EXISTS process_traces (
    id          INTEGER PRIMARY KEY,
    trace_id    INTEGER NOT NULL REFERENCES event_traces(id) ON DELETE CASCADE,
    event_id    INTEGER REFERENCES log_events(id) ON DELETE SET NULL,
    pid         INTEGER NOT NULL,
    ppid        INTEGER,
    uid         INTEGER,
    comm        TEXT,
    exe         TEXT,
    cmdline     TEXT,
    container   TEXT,
    start       TEXT,
    exit        TEXT,
    exit_code   INTEGER
);
CREATE INDEX IF NOT EXISTS ix_process_traces_trace ON process_traces (trace_id);

CREATE TABLE IF NOT EXISTS network_traces (
    id              INTEGER PRIMARY KEY,
    trace_id        INTEGER NOT NULL REFERENCES event_traces(id) ON DELETE CASCADE,
    event_id        INTEGER REFERENCES log_events(id) ON DELETE SET NULL,
    pid             INTEGER,
    local_address   TEXT,
    local_port      INTEGER,
    remote_address  TEXT,
    remote_port     INTEGER,
    states          TEXT,
    first_seen      TEXT,
    last_seen       TEXT,
    bytes_sent      INTEGER,
    bytes_recv      INTEGER
);
CREATE INDEX IF NOT EXISTS ix_network_traces_trace ON network_traces (trace_id);

CREATE TABLE IF NOT EXISTS error_traces (
    id          INTEGER PRIMARY KEY,
    trace_id    INTEGER REFERENCES event_traces(id) ON DELETE CASCADE,
    event_id    INTEGER REFERENCES log_events(id) ON DELETE CASCADE,
    timestamp   TEXT NOT NULL,
    error_type  TEXT NOT NULL,
    category    TEXT NOT NULL,
    severity    TEXT NOT NULL,
    file        TEXT,
    line_no     INTEGER,
    code        TEXT,
    hints       TEXT,
    suggestions TEXT
);
CREATE INDEX IF NOT EXISTS ix_error_traces_timestamp ON error_traces (timestamp);

CREATE TABLE IF NOT EXISTS ip_reputation (
    address     TEXT PRIMARY KEY,
    score       REAL NOT NULL DEFAULT 0,
    verdict     TEXT NOT NULL DEFAULT 'unknown',
    first_seen  TEXT,
    last_seen   TEXT,
    evidence    TEXT,
    counts      TEXT,
    users       TEXT,
    geo         TEXT,
    asn         TEXT,
    blocklists  TEXT,
    updated     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_ip_reputation_score ON ip_reputation (score);

CREATE TABLE IF NOT EXISTS trace_patterns (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    signature   TEXT NOT NULL UNIQUE,
    description TEXT,
    severity    TEXT NOT NULL,
    occurrences INTEGER NOT NULL DEFAULT 0,
    first_seen  TEXT NOT NULL,
    last_seen   TEXT NOT NULL
);
