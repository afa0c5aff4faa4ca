"""Persistence: SQLModel tables, migrations, and the engine (SQLite or PostgreSQL)."""

from connector.store.database import Database, open_database

__all__ = ["Database", "open_database"]
