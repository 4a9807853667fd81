"""The provision log's index by resident code, filled behind the log in sorted batches.

Every provision entry is committed with its access entry before the answer leaves the center. Indexing it
by resident code in that same transaction made each entry a random B-tree insert, one dirtied page per
entry: half of a bulk lookup's cost once the log holds a million entries. Instead `index_provisions` copies
the entries past the cursor into `provision_by_resident` in resident-code order (many entries land on each
page) and advances the cursor in the same transaction. Readers use the index up to the cursor and scan the
log past it, so an entry is found by disclosure from the moment it is committed, indexed or not.

The index leads with the entry's segment (`PROVISION_SEGMENT` consecutive log ids): entries of random
residents land on nearly every page of the part of the index they go into, so a batch costs one pass over
that part. Without segments that part was the whole index, and a job's cost grew with the log; with them
it is the newest segment or two, whatever the log's age. Offline, a job of 200,000 entries (2026-12-03, this
VM): with 4,000,000 entries indexed 648-780 ms holding the write lock and 86-99 MiB written to the WAL
unsegmented, 306-435 ms and 5-24 MiB segmented; with 12,000,000, 1,641-1,842 ms and 250-255 MiB against
514-570 ms and 17-21 MiB. A disclosure seeks each segment for each code (one B-tree search apiece): 12
segments and 3 codes 1.9 ms against 1.7 ms unsegmented."""

from sqlalchemy import BigInteger, Connection, func, literal, select

from jukinet.storage.cursors import move_cursor, newest_id, read_cursor
from jukinet.storage.schema import provision_by_resident, provision_by_resident_cursor, provision_log

# Databases created before this module carry the old per-entry index, and those from before segments the
# unsegmented `provision_key`: once the segmented index has caught up they only cost, so they are dropped.
DROP_OLD_INDEXES = (
    "DROP INDEX IF EXISTS ix_provision_log_resident_code",
    "DROP TABLE IF EXISTS provision_key",
    "DROP TABLE IF EXISTS provision_key_cursor",
)
DEFAULT_BATCH = 250_000  # more than the indexer's min_entries: one job a catch-up
PROVISION_SEGMENT = 1 << 20  # log ids a segment: part of the stored layout, never change it on a live database
_INDEX_COLUMNS = ["segment", "resident_code", "provision_id"]


def segment_of(provision_id: int) -> int:
    return provision_id // PROVISION_SEGMENT


def segment_start(segment: int) -> int:
    """The first provision id in `segment`."""
    return segment * PROVISION_SEGMENT


def segment_end(segment: int) -> int:
    """The last provision id in `segment`."""
    return segment_start(segment + 1) - 1


def indexed_through(conn: Connection) -> int:
    """provision_log.id of the last entry in provision_by_resident (0 before the first batch)."""
    return read_cursor(conn, provision_by_resident_cursor, "indexed_through")


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
    copied = 0
    for segment in range(segment_of(start + 1), segment_of(through) + 1):
        first = max(start + 1, segment_start(segment))
        last = min(through, segment_end(segment))
        in_range = (provision_log.c.id >= first, provision_log.c.id <= last)
        batch = (
            select(literal(segment, BigInteger), provision_log.c.resident_code, provision_log.c.id)
            .where(*in_range)
            .order_by(provision_log.c.resident_code, provision_log.c.id)
        )
        count = conn.execute(provision_by_resident.insert().from_select(_INDEX_COLUMNS, batch)).rowcount
        if count < 0:  # a driver that does not report it for INSERT … SELECT
            count = conn.execute(select(func.count()).select_from(provision_log).where(*in_range)).scalar_one()
        copied += count
    move_cursor(conn, provision_by_resident_cursor, "indexed_through", through)
    return int(copied), through == newest
