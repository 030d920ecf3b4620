"""Storage: schema, models and the SQLite store."""

from logly.store.sqlite import SCHEMA_VERSION, SQLiteStore, StoreError

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "StoreError"]
