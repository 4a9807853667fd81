"""Engines for SQLite (WAL, the embedded default) and PostgreSQL, with explicit transactions."""

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from jukinet.storage.schema import metadata

# Every connection of a node: WAL with synchronous=FULL (an acknowledged change survives a power loss), a
# 128 MiB page cache, rare automatic checkpoints (they rewrite every page, see STACK-LIMITS.md; a Store copies
# the WAL ahead of them on a thread of its own, jukinet.storage.wal_checkpointer), and reads through a
# memory map of up to 1 GiB: agency lookups touch random pages of a million-row table, and a mapped page is
# read without a system call and a copy per page.
AUTOCHECKPOINT_PAGES = 10_000
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
    "PRAGMA cache_size=-131072",
    f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}",
    "PRAGMA mmap_size=1073741824",
    "PRAGMA temp_store=MEMORY",
)


def make_engine(url: str, *, create_schema: bool = True, autocheckpoint_pages: int = AUTOCHECKPOINT_PAGES) -> Engine:
    """An engine for a node database; creates the tables when missing.

    SQLite runs in WAL mode with synchronous=FULL: an acknowledged change survives a process kill
    and a power loss. pysqlite's implicit transactions are turned off so that BEGIN/SAVEPOINT are ours.
    A commit that leaves `autocheckpoint_pages` or more in the WAL checkpoints it (SQLite's
    wal_autocheckpoint)."""
    check_database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database or "").parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, pool_size=4, max_overflow=4, connect_args={"check_same_thread": False})
        _configure_sqlite(engine, autocheckpoint_pages)
    else:
        engine = create_engine(url, pool_size=4, max_overflow=4, pool_pre_ping=True)
    if create_schema:
        metadata.create_all(engine)
    return engine


def check_database_url(url: str) -> None:
    """Raises ValueError, saying what to write instead, unless `url` names a SQLite file or a PostgreSQL
    database. An in-memory SQLite database is refused: a node's acknowledged changes must outlive it, and
    each pooled connection would open an empty database of its own. Messages never show a password."""
    instead = "write sqlite:///path/to/node.db or postgresql+psycopg://user@host/db"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"this is not a database URL; {instead}") from None
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database or ""
        in_memory = (
            database in ("", ":memory:") or database.startswith("file::memory:") or parsed.query.get("mode") == "memory"
        )
        if in_memory:
            raise ValueError(
                f"{shown} is an in-memory SQLite database: a node's changes must survive a restart; "
                "give a file, e.g. sqlite:///data/node.db"
            )
    elif backend == "postgres":
        raise ValueError(f"{shown}: SQLAlchemy spells it postgresql+psycopg://… (not postgres://)")
    elif backend != "postgresql":
        raise ValueError(f"{shown}: {backend} is not supported; {instead}")


def _configure_sqlite(engine: Engine, autocheckpoint_pages: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        if autocheckpoint_pages != AUTOCHECKPOINT_PAGES:
            cursor.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint_pages}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Straight to the driver: through exec_driver_sql this one statement cost about 35 µs more Python on
        # every transaction (a writer runs hundreds of them a second under agency lookups). Connections that
        # write (Store's writer, a LoopBatcher's) take the write lock at once (info["immediate"]); readers not.
        connection.connection.dbapi_connection.execute(
            "BEGIN IMMEDIATE" if connection.info.get("immediate") else "BEGIN"
        )
