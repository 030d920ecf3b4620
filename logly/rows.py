"""The shape of a log_events row as the sources build it and the batch hooks read it.

Stdlib only: the reputation model reads rows by these positions and is loaded by `logly ip`,
which must not pull in the store.
"""

EVENT_INSERT_COLUMNS = (
    "timestamp", "source", "host", "program", "pid", "level", "service", "action", "message",
    "ip_address", "user", "port", "metadata", "file_id", "offset",
)
# each column's position in such a row (hooks index rows in their per-row loops)
(TIMESTAMP, SOURCE, HOST, PROGRAM, PID, LEVEL, SERVICE, ACTION, MESSAGE, IP, USER, PORT,
 METADATA, FILE_ID, OFFSET) = range(len(EVENT_INSERT_COLUMNS))
