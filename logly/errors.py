"""Typed errors and exit codes; one handler in the CLI maps the first to the second."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    NOT_FOUND = 1  # a query found nothing (e.g. `logly ip` for an address never seen)
    USAGE = 2  # bad arguments or input that names nothing valid
    ERROR = 3  # the operation failed (database, file, rule file)
    CONFIG = 4  # configuration or rule files do not load
    INTERRUPTED = 130  # Ctrl-C


class LoglyError(Exception):
    """An error a user can act on: a message and, where there is one, a hint."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(LoglyError):
    exit_code = ExitCode.USAGE


class ConfigError(LoglyError):
    exit_code = ExitCode.CONFIG
