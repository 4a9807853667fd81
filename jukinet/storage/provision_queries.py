"""Reads of the center's provision log: a resident's provisions, for disclosure (提供状況開示)."""

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import Connection, case, select, union_all

from jukinet.domain.errors import InconsistentRecords
from jukinet.services.ports import ProvisionEntry
from jukinet.storage import provision_index, rows
from jukinet.storage.cursors import cursor_query
from jukinet.storage.schema import provision_by_resident, provision_by_resident_cursor, provision_log
from jukinet.storage.sql_tx import SqlTx

# One resident's codes (a code change adds one): far more than anyone has, well inside the bound variables
# of a statement (both halves of the query list them: 2 x 10,000 < SQLite's 32,766, with room for the index's
# segments besides: one per 1,048,576 entries).
MAX_CODES = 10_000


def provision_page(
    conn: Connection,
    codes: Sequence[str],
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[tuple[int, ProvisionEntry]]:
    """Provisions under any of the codes with since <= at < until and id > after_id, oldest (lowest id)
    first, at most `limit`."""
    if not codes or limit <= 0:
        return []
    if len(codes) > MAX_CODES:
        raise InconsistentRecords(
            f"{len(codes)} 住民票コード chained to one resident (at most {MAX_CODES} are expected); the center's "
            "records are inconsistent: report this request id to the center's operator"
        )
    # Indexed entries through the cursor, and the unindexed tail past it, scanned (jukinet.storage.
    # provision_index). One statement, so one snapshot: the parts are disjoint even while a batch is indexed.
    # The index is sought segment by segment, up to the cursor's segment as read just before; should the
    # indexer move the cursor past that segment meanwhile, the tail starts at the segment's end instead of
    # at the cursor, so an entry is found in exactly one part either way.
    first_segment = provision_index.segment_of(after_id)
    last_segment = max(first_segment, provision_index.segment_of(provision_index.indexed_through(conn)))
    last_sought = provision_index.segment_end(last_segment)
    cursor = cursor_query(provision_by_resident_cursor, "indexed_through")
    tail_after = case((cursor > last_sought, last_sought), else_=cursor)
    keyed = select(provision_by_resident.c.provision_id).where(
        provision_by_resident.c.segment.in_(range(first_segment, last_segment + 1)),
        provision_by_resident.c.resident_code.in_(list(codes)),
        provision_by_resident.c.provision_id > after_id,
    )
    filters = []
    if since is not None:
        filters.append(provision_log.c.at_us >= rows.to_us(since))
    if until is not None:
        filters.append(provision_log.c.at_us < rows.to_us(until))
    indexed = select(provision_log).where(provision_log.c.id.in_(keyed), *filters)
    tail = select(provision_log).where(
        provision_log.c.id > tail_after,
        provision_log.c.id > after_id,
        provision_log.c.resident_code.in_(list(codes)),
        *filters,
    )
    query = union_all(indexed, tail).order_by("id").limit(limit)
    return [
        (
            row.id,
            ProvisionEntry(
                at=rows.from_us(row.at_us),
                request_id=row.request_id,
                agency=row.agency,
                purpose=row.purpose,
                resident_code=row.resident_code,
                fields=tuple(row.fields.split()),
                channel=row.channel,
            ),
        )
        for row in conn.execute(query)
    ]


class DisclosureSqlTx(SqlTx):
    """Implements jukinet.services.disclosure.DisclosureTx."""

    def provisions_of(
        self,
        codes: Sequence[str],
        *,
        since: dt.datetime | None,
        until: dt.datetime | None,
        after_id: int,
        limit: int,
    ) -> list[tuple[int, ProvisionEntry]]:
        return provision_page(self.conn, codes, since=since, until=until, after_id=after_id, limit=limit)
