"""The action vocabulary (re-exported by logly/events.py, where ARCHITECTURE.md places it).

The action names are a contract: scripts and correlation rules match on them, so they are
constants here and rule files are checked against this set at load time. A module of its own,
with no imports, because `logly ip` checks the reputation model against it in a process that
must answer in milliseconds and logly.events builds a dataclass.
"""

ACTIONS: frozenset[str] = frozenset(
    {
        "auth_failure",
        "invalid_user",
        "auth_success",
        "preauth_disconnect",
        "scan",
        "session_open",
        "session_close",
        "sudo_command",
        "sudo_failure",
        "sudo_denied",
        "su_success",
        "su_failure",
        "user_added",
        "user_deleted",
        "user_modified",
        "group_changed",
        "password_changed",
        "firewall_block",
        "f2b_found",
        "f2b_ban",
        "f2b_unban",
        # informational lines worth keeping that carry no security verdict
        "connection",
        "disconnect",
        "error",
        "info",
    }
)

# Actions that count against the address that caused them.
ATTACK_ACTIONS: frozenset[str] = frozenset(
    {
        "auth_failure",
        "invalid_user",
        "preauth_disconnect",
        "scan",
        "firewall_block",
        "f2b_found",
        "f2b_ban",
    }
)
