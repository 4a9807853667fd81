"""Reads of the center's provision log: a resident's provisions, for disclosure (提供状況開示)."""

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import Connection, select, union_all

from jukinet.domain.errors import InconsistentRecords
from jukinet.services.ports import ProvisionEntry
from jukinet.storage import rows
from jukinet.storage.cursors import cursor_query
from jukinet.storage.schema import provision_key, provision_key_cursor, provision_log
from jukinet.storage.sql_tx import SqlTx

# One resident's codes (a code change adds one): far more than anyone has, well inside the bound variables
# of a statement (both halves of the query list them: 2 x 10,000 < SQLite's 32,766).
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
    cursor = cursor_query(provision_key_cursor, "indexed_through")
    keyed = select(provision_key.c.provision_id).where(
        provision_key.c.resident_code.in_(list(codes)), provision_key.c.provision_id > after_id
    )
    filters = []
    if since is not None:
        filters.append(provision_log.c.at_us >= rows.to_us(since))
    if until is not None:
        filters.append(provision_log.c.at_us < rows.to_us(until))
    indexed = select(provision_log).where(provision_log.c.id.in_(keyed), *filters)
    tail = select(provision_log).where(
        provision_log.c.id > cursor,
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
