"""The provision log's index by resident code, filled behind the log in sorted batches.

Every provision entry is committed with its access entry before the answer leaves the center. Indexing it
by resident code in that same transaction made each entry a random B-tree insert, one dirtied page per
entry: half of a bulk lookup's cost once the log holds a million entries. Instead `index_provisions` copies
the entries past the cursor into `provision_key` in resident-code order (many entries land on each page)
and advances the cursor in the same transaction. Readers use the index up to the cursor and scan the log
past it, so an entry is found by disclosure from the moment it is committed, indexed or not."""

from sqlalchemy import Connection, func, select

from jukinet.storage.cursors import move_cursor, newest_id, read_cursor
from jukinet.storage.schema import provision_key, provision_key_cursor, provision_log

# Databases created before this module carry the old per-entry index: it only costs, drop it.
DROP_PER_ENTRY_INDEX = "DROP INDEX IF EXISTS ix_provision_log_resident_code"
DEFAULT_BATCH = 250_000  # more than the indexer's min_entries: one job a catch-up, one pass over the index


def indexed_through(conn: Connection) -> int:
    """provision_log.id of the last entry in provision_key (0 before the first batch)."""
    return read_cursor(conn, provision_key_cursor, "indexed_through")


def newest_provision(conn: Connection) -> int:
    return newest_id(conn, provision_log)


def unindexed(conn: Connection) -> int:
    """Entries past the cursor: what a disclosure scans besides the index (ids are never reused)."""
    return max(0, newest_provision(conn) - indexed_through(conn))


def index_provisions(conn: Connection, limit: int = DEFAULT_BATCH, *, upto: int | None = None) -> tuple[int, bool]:
    """Indexes the entries with ids up to `limit` past the cursor (and at most `upto`), in resident-code
    order, and moves the cursor past them; returns (entries indexed, whether the cursor reached the newest
    entry, or `upto`).

    Runs as a job of the node's one writer, like every insert into the log: ids are committed in order, so
    no entry below the cursor can still be in flight (PostgreSQL sequences included)."""
    if conn.dialect.name == "postgresql":
        # Waits for any other transaction still inserting into the log (only a second writer could be one):
        # an id it holds below the cursor would otherwise be neither indexed nor in the scanned tail.
        conn.exec_driver_sql("LOCK TABLE provision_log IN SHARE ROW EXCLUSIVE MODE")
    start = indexed_through(conn)
    newest = newest_provision(conn) if upto is None else min(upto, newest_provision(conn))
    through = min(newest, start + limit)
    if through <= start:
        return 0, True
    batch = (
        select(provision_log.c.resident_code, provision_log.c.id)
        .where(provision_log.c.id > start, provision_log.c.id <= through)
        .order_by(provision_log.c.resident_code, provision_log.c.id)
    )
    copied = conn.execute(provision_key.insert().from_select(["resident_code", "provision_id"], batch)).rowcount
    if copied < 0:  # a driver that does not report it for INSERT … SELECT
        in_range = (provision_log.c.id > start, provision_log.c.id <= through)
        copied = conn.execute(select(func.count()).select_from(provision_log).where(*in_range)).scalar_one()
    move_cursor(conn, provision_key_cursor, "indexed_through", through)
    return int(copied), through == newest
