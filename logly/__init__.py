"""Logly: security event tracer and log correlation for Linux servers."""

__version__ = "0.1.0"
